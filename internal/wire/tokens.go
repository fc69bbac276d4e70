package wire

import "time"

// Token administration: admin verbs.
const (
	SubjectTokenCreate = "lavit.v1.admin.token.create"
	SubjectTokenList   = "lavit.v1.admin.token.list"
	SubjectTokenRevoke = "lavit.v1.admin.token.revoke"
)

// TokenCreateRequest asks for a new token.
type TokenCreateRequest struct {
	Auth
	Role string `json:"role"` // "worker" or "admin"
	// TTLSeconds, when positive, makes the token expire that long after
	// it is made (0: never).
	TTLSeconds int64  `json:"ttl_seconds,omitempty"`
	Note       string `json:"note,omitempty"`
}

// TokenInfo describes an issued token, never the token itself.
type TokenInfo struct {
	ID      string    `json:"id"`
	Role    string    `json:"role"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"` // zero: never
	Note    string    `json:"note,omitempty"`
}

// TokenCreateReply carries the new token: the only time it is shown.
type TokenCreateReply struct {
	TokenInfo
	Token string `json:"token"`
}

// TokenListRequest asks for every issued token.
type TokenListRequest struct{ Auth }

// TokenListReply lists the issued tokens (the admin token made at the
// cluster's first start is not among them).
type TokenListReply struct {
	Tokens []TokenInfo `json:"tokens"`
}

// TokenRevokeRequest revokes one token by id.
type TokenRevokeRequest struct {
	Auth
	ID string `json:"id"`
}

// Token verbs.
var (
	CreateToken = Endpoint[TokenCreateRequest, TokenCreateReply]{SubjectTokenCreate}
	ListTokens  = Endpoint[TokenListRequest, TokenListReply]{SubjectTokenList}
	RevokeToken = Endpoint[TokenRevokeRequest, Empty]{SubjectTokenRevoke}
)
