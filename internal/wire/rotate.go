package wire

import "time"

// SubjectTokenRotate starts, finishes or abandons a rotation of the
// admin token, and with it of the cluster CA (an admin verb).
const SubjectTokenRotate = "lavit.v1.admin.token.rotate"

// Rotation actions.
const (
	RotateStart  = "start"
	RotateFinish = "finish"
	RotateAbort  = "abort"
)

// TokenRotateRequest asks for one step of an admin token rotation.
type TokenRotateRequest struct {
	Auth
	Action string `json:"action"` // RotateStart, RotateFinish or RotateAbort
	// Force finishes even though some coordinators have not yet taken
	// the new CA (they are down or behind): they will need the new token
	// copied to their data dir by hand.
	Force bool `json:"force,omitempty"`
}

// TokenRotateReply reports the rotation after the step.
type TokenRotateReply struct {
	Action string `json:"action"`
	// Token is the new admin token, shown once, by the start.
	Token string `json:"token,omitempty"`
	// CAFingerprint is the sha256 of the CA that tokens pin from now on
	// (the next CA from the start, the current one after an abort).
	CAFingerprint string    `json:"ca_fingerprint"`
	Started       time.Time `json:"started,omitzero"`
}

// RotateToken is the rotation verb.
var RotateToken = Endpoint[TokenRotateRequest, TokenRotateReply]{SubjectTokenRotate}
