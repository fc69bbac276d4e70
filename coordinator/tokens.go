package coordinator

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lavit-org/lavit/internal/wire"
)

// Issued tokens. The admin token made at the cluster's first start is
// the root credential (its hash is State.TokenHash); an admin issues
// further tokens with `lavit-coord token create --role worker|admin`, and
// revokes them by id. A token is "lavit.<id>.<secret>.<ca>": the id finds
// its record, the secret (32 random bytes) is what the hash proves, and
// the CA's fingerprint lets its holder pin the cluster's CA
// (wire.SplitToken; it is not part of the credential). Raft keeps only
// the hash; the token itself is shown once, to its creator.

// TokenRecord is one issued token as the FSM keeps it.
type TokenRecord struct {
	ID      string    `json:"id"`
	Role    Role      `json:"role"`
	Hash    string    `json:"hash"` // sha256 of "lavit.<id>.<secret>", hex
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"` // zero: never
	Note    string    `json:"note,omitempty"`
}

// CreateTokenCmd records a token the leader made.
type CreateTokenCmd struct {
	Token TokenRecord `json:"token"`
}

// RevokeTokenCmd forgets a token: from then on no coordinator accepts it.
type RevokeTokenCmd struct {
	ID string `json:"id"`
}

// Limits on issued tokens.
const (
	maxTokens       = 4096
	maxTokenNote    = 256
	tokenIDBytes    = 6
	tokenSecretSize = 32
	tokenPrefix     = "lavit."
)

func validRole(r Role) bool { return r == RoleAdmin || r == RoleWorker }

func (s *State) applyCreateToken(c CreateTokenCmd) error {
	t := c.Token
	switch {
	case !validTokenID(t.ID):
		return fmt.Errorf("create token: id %q is not %d hex bytes", t.ID, tokenIDBytes)
	case !validRole(t.Role):
		return fmt.Errorf("create token %s: role %q, want worker or admin", t.ID, t.Role)
	case len(t.Hash) != 64:
		return fmt.Errorf("create token %s: hash of %d characters, want 64", t.ID, len(t.Hash))
	case len(t.Note) > maxTokenNote:
		return fmt.Errorf("create token %s: note of %d bytes, at most %d", t.ID, len(t.Note), maxTokenNote)
	case s.Tokens[t.ID] != nil:
		return fmt.Errorf("create token: id %s already exists", t.ID)
	case len(s.Tokens) >= maxTokens:
		return fmt.Errorf("create token: %d tokens issued, the limit; revoke some first", len(s.Tokens))
	}
	if s.Tokens == nil {
		s.Tokens = map[string]*TokenRecord{}
	}
	s.Tokens[t.ID] = &t
	return nil
}

func (s *State) applyRevokeToken(c RevokeTokenCmd) error {
	if s.Tokens[c.ID] == nil {
		return fmt.Errorf("revoke token: %w %q (lavit-coord token ls lists them)", errNoSuchToken, c.ID)
	}
	delete(s.Tokens, c.ID)
	return nil
}

func validTokenID(id string) bool {
	b, err := hex.DecodeString(id)
	return err == nil && len(b) == tokenIDBytes && strings.ToLower(id) == id
}

// newToken makes the credential of a fresh id and secret.
func newToken() (id, token string, err error) {
	b := make([]byte, tokenIDBytes+tokenSecretSize)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("make a token: %w", err)
	}
	id = hex.EncodeToString(b[:tokenIDBytes])
	return id, tokenPrefix + id + "." + base64.RawURLEncoding.EncodeToString(b[tokenIDBytes:]), nil
}

// issuedTokenID is the id part of an issued token ("" for anything else,
// such as the admin token).
func issuedTokenID(token string) string {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return ""
	}
	id, _, ok := strings.Cut(rest, ".")
	if !ok || !validTokenID(id) {
		return ""
	}
	return id
}

// issuedRole resolves an issued token against the state at time now.
func issuedRole(st *State, token string, now time.Time) (Role, string, error) {
	id := issuedTokenID(token)
	rec := st.Tokens[id]
	switch {
	case id == "" || rec == nil || !tokenMatches(token, rec.Hash):
		return "", "", errBadToken
	case !rec.Expires.IsZero() && !now.Before(rec.Expires):
		return "", "", fmt.Errorf("token %s expired at %s", id, rec.Expires.Format(time.RFC3339))
	}
	return rec.Role, rec.ID, nil
}

func tokenInfo(r *TokenRecord) wire.TokenInfo {
	return wire.TokenInfo{ID: r.ID, Role: string(r.Role), Created: r.Created, Expires: r.Expires, Note: r.Note}
}

// maxTokenTTL bounds --ttl: ten years.
const maxTokenTTL = 10 * 365 * 24 * time.Hour

func (s *Server) handleTokenCreate(req *wire.TokenCreateRequest) (*wire.TokenCreateReply, *wire.Error) {
	role := Role(req.Role)
	switch {
	case !validRole(role):
		return nil, wire.Errorf(wire.CodeBadRequest, "token create: role %q, want worker or admin", req.Role)
	case req.TTLSeconds < 0 || req.TTLSeconds > int64(maxTokenTTL/time.Second):
		return nil, wire.Errorf(wire.CodeBadRequest, "token create: ttl of %d s, want 0 (never expires) up to %s", req.TTLSeconds, maxTokenTTL)
	case len(req.Note) > maxTokenNote:
		return nil, wire.Errorf(wire.CodeBadRequest, "token create: note of %d bytes, at most %d", len(req.Note), maxTokenNote)
	}
	id, token, err := newToken()
	if err != nil {
		return nil, toWireError(err)
	}
	now := time.Now().UTC()
	rec := TokenRecord{ID: id, Role: role, Hash: hashToken(token), Created: now, Note: req.Note}
	token += "." + s.keys.Signer().Fingerprint()
	if req.TTLSeconds > 0 {
		rec.Expires = now.Add(time.Duration(req.TTLSeconds) * time.Second)
	}
	if err := s.raftApply(CmdCreateToken, CreateTokenCmd{Token: rec}); err != nil {
		return nil, toWireError(err)
	}
	s.log.Info("token created", "id", id, "role", role, "by", req.From)
	return &wire.TokenCreateReply{TokenInfo: tokenInfo(&rec), Token: token}, nil
}

func (s *Server) handleTokenList(*wire.TokenListRequest) (*wire.TokenListReply, *wire.Error) {
	reply := &wire.TokenListReply{Tokens: []wire.TokenInfo{}}
	s.fsm.Read(func(st *State, _ uint64) {
		for _, r := range st.Tokens {
			reply.Tokens = append(reply.Tokens, tokenInfo(r))
		}
	})
	slices.SortFunc(reply.Tokens, func(a, b wire.TokenInfo) int { return a.Created.Compare(b.Created) })
	return reply, nil
}

func (s *Server) handleTokenRevoke(req *wire.TokenRevokeRequest) (*wire.Empty, *wire.Error) {
	if !validTokenID(req.ID) {
		return nil, wire.Errorf(wire.CodeBadRequest, "token revoke: %q is not a token id (lavit-coord token ls lists them)", req.ID)
	}
	if err := s.raftApply(CmdRevokeToken, RevokeTokenCmd{ID: req.ID}); err != nil {
		if errors.Is(err, errNoSuchToken) {
			return nil, wire.Errorf(wire.CodeUnknown, "%v", err)
		}
		return nil, toWireError(err)
	}
	s.log.Info("token revoked", "id", req.ID, "by", req.From)
	return &wire.Empty{}, nil
}

var errNoSuchToken = errors.New("no such token")
