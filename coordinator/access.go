package coordinator

import (
	"crypto/hmac"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lavit-org/lavit/internal/natsembed"
	"github.com/lavit-org/lavit/internal/wire"
)

// Who may do what. Every token has a role: the admin token (made at the
// cluster's first start, held by coordinators and operators) may do
// anything; a worker token may only run a worker. The same policy is
// enforced twice: by the embedded NATS server, on what each connection
// may publish and subscribe to (natsGrant), and by the control service, on
// each request's token (authorize), which also covers an external NATS.

// Role is what a token may do.
type Role string

const (
	RoleAdmin  Role = "admin"
	RoleWorker Role = "worker"
)

// workerSubjects are the control subjects a worker token may call: its
// own lifecycle, the rendezvous, its reports, and reading the run it
// trains (the spec and the checkpoints to restore).
var workerSubjects = []string{
	wire.SubjectRegister, wire.SubjectHeartbeat, wire.SubjectDeregister,
	wire.SubjectRendezvous, wire.SubjectProgress, wire.SubjectRunFinish, wire.SubjectCkptPart,
	wire.SubjectRunShow, wire.SubjectCkptList,
}

// controlSubjects matches every control subject.
const controlSubjects = "lavit.v1.>"

// mayCall reports whether a token of role may call the control subject.
func mayCall(role Role, subject string) bool {
	switch role {
	case RoleAdmin:
		return strings.HasPrefix(subject, "lavit.v1.")
	case RoleWorker:
		return slices.Contains(workerSubjects, subject)
	}
	return false
}

// errBadToken: a token that no role holds. The message never echoes it.
var errBadToken = errors.New("invalid token: check --token / --token-file / LAVIT_TOKEN (the first coordinator saved the admin token in its data dir as 'token'; worker tokens come from 'lavit-coord token create')")

// tokenRole resolves a presented token to its role and id (roleIn).
func (s *Server) tokenRole(token string) (Role, string, error) {
	var role Role
	var id string
	var err error
	own := s.adminToken()
	s.fsm.Read(func(st *State, _ uint64) { role, id, err = roleIn(st, token, own, time.Now()) })
	return role, id, err
}

// roleIn resolves token against st (read under the FSM's lock) at time
// now: an issued token (tokens.go) by its record, else the admin token (id
// "admin"), whose hash is st.TokenHash, or ownToken's before the
// cluster's first command.
func roleIn(st *State, token, ownToken string, now time.Time) (Role, string, error) {
	token, _ = wire.SplitToken(token) // the CA's fingerprint proves nothing
	if issuedTokenID(token) != "" {
		return issuedRole(st, token, now)
	}
	hash := st.TokenHash
	if hash == "" {
		hash = hashToken(ownToken)
	}
	if tokenMatches(token, hash) {
		return RoleAdmin, "admin", nil
	}
	if r := st.AdminRotation; r != nil && tokenMatches(token, hashToken(r.NewToken)) {
		return RoleAdmin, "admin", nil // the next admin token, during a rotation
	}
	return "", "", errBadToken
}

// actsAs checks that a worker token's holder acts only as a worker it
// registered: a worker id registered with another token (or the admin
// token) is not its to heartbeat, deregister or report for. "" when
// allowed.
func actsAs(rec *WorkerRecord, role Role, tokenID string) string {
	if role != RoleWorker || rec == nil || rec.TokenID == "" || rec.TokenID == tokenID {
		return ""
	}
	return fmt.Sprintf("worker %q was registered with another token", rec.ID)
}

// coordinatorNATSUser is the user of a coordinator's own connection to
// its embedded NATS server (in process), the one client that may serve
// the control subjects (which no token may). Its password is random per
// process (Server.natsPassword): nothing else ever needs it. Routes
// between the servers need no password: mutual TLS with the cluster CA
// admits coordinators only, and follows a rotation of the CA.
const coordinatorNATSUser = "lavit-coordinator"

// natsGrant is the embedded NATS server's authenticator: coordinators may
// do anything; a token's holder may publish requests on the control
// subjects and subscribe to its own reply inbox only (so it can neither
// read others' requests and replies nor answer them as a fake leader).
func (s *Server) natsGrant(c natsembed.Credentials) (natsembed.Grant, error) {
	if c.User != "" {
		if c.User == coordinatorNATSUser && hmac.Equal([]byte(c.Password), []byte(s.natsPassword)) {
			return natsembed.Grant{Name: "coordinator"}, nil
		}
		return natsembed.Grant{}, errors.New("unknown NATS user or wrong password")
	}
	if c.Token == "" {
		return natsembed.Grant{}, errors.New("no token: lavit clients present their lavit token")
	}
	role, id, err := s.tokenRole(c.Token)
	if err != nil {
		return natsembed.Grant{}, err
	}
	// Every token may publish requests on any control subject (the
	// control service refuses a verb its role may not call, with a clear
	// error, rather than the request going unanswered); none may publish
	// elsewhere (a reply to someone's inbox) or subscribe anywhere but its
	// own inbox.
	grant := natsembed.Grant{Name: string(role) + ":" + id, Publish: []string{controlSubjects},
		Subscribe: []string{wire.InboxPrefix(c.Token) + ".>"}}
	return grant, nil
}
