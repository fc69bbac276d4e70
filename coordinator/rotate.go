package coordinator

import (
	"crypto/hmac"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/datadir"
	"github.com/lavit-org/lavit/internal/wire"
)

// Rotating the admin token, and with it the cluster CA (derived from the
// token, internal/clusterca), while the cluster runs:
//
//  1. start: the leader makes the next token and commits it through raft.
//     Every coordinator, as it applies the entry, saves it in its data dir
//     (token.next), trusts the next CA beside the current one and
//     presents a certificate of the next CA cross-signed by the current
//     one. Both tokens are admin tokens; clients pinned to either CA
//     connect. Operators move clients to the new token, and worker tokens
//     to the new CA's fingerprint.
//  2. finish, called with the new token (proof that it was saved), once
//     every coordinator has taken the next CA (the leader checks each
//     with a TLS handshake that trusts the next CA alone): the new token
//     becomes the cluster's admin token, each coordinator saves it as its
//     token, and the old token and the old CA are trusted no more. NATS
//     connections of the old token are closed.
//
// abort, before finishing, forgets the next token. The steps are a pure
// decision (adminTokens) and thin effects around it (syncAdminKeys).

// AdminRotation is a rotation of the admin token in progress.
type AdminRotation struct {
	// NewToken is the next admin token. It is replicated so that every
	// coordinator derives the next CA: it lies in each coordinator's raft
	// log and snapshots, as private as <data-dir>/token, and no reply or
	// status carries it except the start's, to the admin who asked.
	NewToken string    `json:"new_token"`
	Started  time.Time `json:"started"`
}

// RotateAdminCmd starts, finishes or abandons a rotation.
type RotateAdminCmd struct {
	Action   string    `json:"action"`              // wire.RotateStart, RotateFinish or RotateAbort
	NewToken string    `json:"new_token,omitempty"` // start only
	At       time.Time `json:"at"`
}

// minAdminToken is the shortest admin token a rotation accepts.
const minAdminToken = 16

var errNoRotation = errors.New("no admin token rotation is in progress")

func (s *State) applyRotateAdmin(c RotateAdminCmd) error {
	switch c.Action {
	case wire.RotateStart:
		switch {
		case s.TokenHash == "":
			return errors.New("rotate the admin token: the cluster is not initialised")
		case s.AdminRotation != nil:
			return fmt.Errorf("rotate the admin token: a rotation started at %s is in progress", s.AdminRotation.Started.Format(time.RFC3339))
		case len(c.NewToken) < minAdminToken:
			return fmt.Errorf("rotate the admin token: the new token has %d characters, want at least %d", len(c.NewToken), minAdminToken)
		case hashToken(c.NewToken) == s.TokenHash:
			return errors.New("rotate the admin token: the new token is the current one")
		}
		s.AdminRotation = &AdminRotation{NewToken: c.NewToken, Started: c.At}
	case wire.RotateFinish:
		if s.AdminRotation == nil {
			return fmt.Errorf("finish: %w", errNoRotation)
		}
		s.TokenHash = hashToken(s.AdminRotation.NewToken)
		s.AdminRotation = nil
	case wire.RotateAbort:
		if s.AdminRotation == nil {
			return fmt.Errorf("abort: %w", errNoRotation)
		}
		s.AdminRotation = nil
	default:
		return fmt.Errorf("rotate the admin token: action %q, want start, finish or abort", c.Action)
	}
	return nil
}

// errStaleAdminToken: this node's admin token is not the cluster's.
var errStaleAdminToken = errors.New("this node's admin token is not the cluster's: the token was rotated while this node was away (copy the cluster's current admin token into <data-dir>/token and restart it)")

// adminTokens decides which admin tokens a node holds, from the
// replicated state (the admin token's hash, the rotation in progress)
// and the tokens the node knows: own, the one it uses now, and saved, a
// rotation's next token it saved. current is the token whose CA it
// trusts and presents, next the rotation's ("" when none).
func adminTokens(tokenHash string, rot *AdminRotation, own, saved string) (current, next string, err error) {
	switch {
	case tokenHash == "": // before the cluster's first command
		return own, "", nil
	case rot != nil && hashToken(own) == tokenHash:
		return own, rot.NewToken, nil
	case rot != nil && own == rot.NewToken: // started (or joined) with the new token
		return own, "", nil
	case hashToken(own) == tokenHash:
		return own, "", nil
	case saved != "" && hashToken(saved) == tokenHash: // the rotation finished
		return saved, "", nil
	}
	return "", "", errStaleAdminToken
}

// syncAdminKeys brings this node's admin token, saved files and TLS
// keyring in line with the replicated state (called by watchState after
// every change).
func (s *Server) syncAdminKeys(tokenHash string, rot *AdminRotation) {
	s.tokenMu.Lock()
	own, saved := s.token, s.nextToken
	s.tokenMu.Unlock()
	current, next, err := adminTokens(tokenHash, rot, own, saved)
	if err != nil {
		if !s.staleTokenLogged {
			s.log.Error("admin token", "err", err)
			s.staleTokenLogged = true
		}
		return
	}
	dir := s.cfg.DataDir
	if next != "" && next != saved {
		if err := datadir.WriteNextToken(dir, next); err != nil {
			s.log.Error("save the next admin token; the rotation cannot finish safely until it is saved", "err", err)
			return
		}
		s.log.Info("admin token rotation started: trusting the next cluster CA beside the current one")
	}
	if current != own {
		if err := datadir.WriteToken(dir, current); err != nil {
			s.log.Error("save the rotated admin token", "err", err)
			return
		}
		s.log.Info("admin token rotation finished: this node uses the new token and trusts the new cluster CA only")
	}
	if next == "" && saved != "" {
		if err := datadir.RemoveNextToken(dir); err != nil {
			s.log.Warn("remove the saved next admin token", "err", err)
		}
	}
	s.tokenMu.Lock()
	s.token, s.nextToken = current, next
	s.tokenMu.Unlock()
	if err := s.setKeys(current, next); err != nil {
		s.log.Error("admin token rotation: set the TLS keys", "err", err)
	}
}

// setKeys makes this node trust current's CA and, with next, rotate to
// next's.
func (s *Server) setKeys(current, next string) error {
	if s.keyTokens == [2]string{current, next} {
		return nil
	}
	cur, err := clusterca.Derive(current)
	if err != nil {
		return err
	}
	var nxt *clusterca.CA
	if next != "" {
		if nxt, err = clusterca.Derive(next); err != nil {
			return err
		}
	}
	if err := s.keys.Set(cur, nxt); err != nil {
		return err
	}
	s.keyTokens = [2]string{current, next}
	return nil
}

// adminToken is the admin token this node uses now.
func (s *Server) adminToken() string {
	s.tokenMu.Lock()
	defer s.tokenMu.Unlock()
	return s.token
}

func (s *Server) handleTokenRotate(req *wire.TokenRotateRequest) (*wire.TokenRotateReply, *wire.Error) {
	var rot *AdminRotation
	s.fsm.Read(func(st *State, _ uint64) {
		if st.AdminRotation != nil {
			r := *st.AdminRotation
			rot = &r
		}
	})
	reply := &wire.TokenRotateReply{Action: req.Action}
	switch req.Action {
	case wire.RotateStart:
		if rot != nil {
			return nil, wire.Errorf(wire.CodeConflict, "token rotate: a rotation started at %s is in progress: finish it (token rotate --finish, with the new token) or abort it (--abort)", rot.Started.Format(time.RFC3339))
		}
		token, err := datadir.NewToken()
		if err != nil {
			return nil, toWireError(err)
		}
		next, err := clusterca.Derive(token)
		if err != nil {
			return nil, toWireError(err)
		}
		now := time.Now().UTC()
		if err := s.raftApply(CmdRotateAdmin, RotateAdminCmd{Action: wire.RotateStart, NewToken: token, At: now}); err != nil {
			return nil, toWireError(err)
		}
		reply.Token, reply.CAFingerprint, reply.Started = token, next.Fingerprint(), now
	case wire.RotateFinish:
		if rot == nil {
			return nil, wire.Errorf(wire.CodeConflict, "token rotate --finish: %v", errNoRotation)
		}
		if cred, _ := wire.SplitToken(req.Token); !hmac.Equal([]byte(cred), []byte(rot.NewToken)) {
			return nil, wire.Errorf(wire.CodeAuth, "token rotate --finish: call it with the new admin token (it proves the new token was saved: the old one stops working now)")
		}
		next, err := clusterca.Derive(rot.NewToken)
		if err != nil {
			return nil, toWireError(err)
		}
		if behind := s.peersWithoutCA(next); len(behind) > 0 && !req.Force {
			return nil, wire.Errorf(wire.CodeUnavailable, "token rotate --finish: not every coordinator has taken the new CA (%s); bring them up and retry, or --force to finish without them (then copy the new token into their data dirs by hand)", joinLimited(behind, 5))
		}
		if err := s.raftApply(CmdRotateAdmin, RotateAdminCmd{Action: wire.RotateFinish, At: time.Now().UTC()}); err != nil {
			return nil, toWireError(err)
		}
		reply.CAFingerprint, reply.Started = next.Fingerprint(), rot.Started
	case wire.RotateAbort:
		if rot == nil {
			return nil, wire.Errorf(wire.CodeConflict, "token rotate --abort: %v", errNoRotation)
		}
		if err := s.raftApply(CmdRotateAdmin, RotateAdminCmd{Action: wire.RotateAbort, At: time.Now().UTC()}); err != nil {
			return nil, toWireError(err)
		}
		reply.CAFingerprint, reply.Started = s.keys.Current().Fingerprint(), rot.Started
	default:
		return nil, wire.Errorf(wire.CodeBadRequest, "token rotate: action %q, want start, finish or abort", req.Action)
	}
	s.log.Info("admin token rotation", "action", req.Action, "force", req.Force, "by", req.From)
	return reply, nil
}

// rotationProbeTimeout bounds the TLS handshake with each peer.
const rotationProbeTimeout = 3 * time.Second

// peersWithoutCA lists the voters other than this node that do not
// present a certificate of ca on their raft port (down, behind, or not
// yet rotated), each with why.
func (s *Server) peersWithoutCA(ca *clusterca.CA) []string {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return []string{fmt.Sprintf("raft configuration: %v", err)}
	}
	cfg := s.keys.TrustOnly(ca)
	var behind []string
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == s.cfg.NodeID {
			continue
		}
		d := &net.Dialer{Timeout: rotationProbeTimeout}
		c, err := tls.DialWithDialer(d, "tcp", string(srv.Address), cfg)
		if err != nil {
			behind = append(behind, fmt.Sprintf("%s at %s: %v", srv.ID, srv.Address, err))
			continue
		}
		c.Close()
	}
	slices.Sort(behind)
	return behind
}

// joinLimited joins at most n items, saying how many it left out.
func joinLimited(items []string, n int) string {
	if len(items) <= n {
		return fmt.Sprint(items)
	}
	return fmt.Sprintf("%v and %d more", items[:n], len(items)-n)
}
