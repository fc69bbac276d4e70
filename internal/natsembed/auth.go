package natsembed

import (
	"log/slog"
	"sync"

	"github.com/nats-io/nats-server/v2/server"
)

// Credentials are what a client presented when it connected.
type Credentials struct {
	User, Password, Token string
}

// Grant is what an authenticated client may do.
type Grant struct {
	// Name says who it is, for logs and monitoring ("coordinator",
	// "worker:ab12…"); never a secret.
	Name string
	// Publish and Subscribe are the subjects it may publish to and
	// subscribe to (NATS wildcards allowed). Both nil: anything (a
	// coordinator).
	Publish, Subscribe []string
}

// Authenticator decides whether a client may connect and what it may do;
// an error refuses it (the error is logged, the client hears only that
// authorization failed).
type Authenticator func(Credentials) (Grant, error)

// clientAuth is the server's CustomClientAuthentication: it asks the
// Authenticator, sets the grant's permissions on the connection, and
// remembers the credentials of every client it let in, so Recheck can
// close those whose credentials stop being valid (a revoked token).
type clientAuth struct {
	authenticate Authenticator
	log          *slog.Logger

	mu    sync.Mutex
	conns map[uint64]Credentials // by client id
}

// Check implements server.Authentication.
func (a *clientAuth) Check(c server.ClientAuthentication) bool {
	opts := c.GetOpts()
	creds := Credentials{User: opts.Username, Password: opts.Password, Token: opts.Token}
	g, err := a.authenticate(creds)
	if err != nil {
		a.log.Warn("refused a NATS client", "remote", addrString(c), "name", opts.Name, "err", err)
		return false
	}
	u := &server.User{Username: g.Name}
	if g.Publish != nil || g.Subscribe != nil {
		u.Permissions = &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: nonNil(g.Publish)},
			Subscribe: &server.SubjectPermission{Allow: nonNil(g.Subscribe)},
		}
	}
	c.RegisterUser(u)
	a.mu.Lock()
	a.conns[c.GetID()] = creds
	a.mu.Unlock()
	return true
}

// nonNil makes an empty allow-list explicit: nil would allow everything.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func addrString(c server.ClientAuthentication) string {
	if a := c.RemoteAddress(); a != nil {
		return a.String()
	}
	return "in-process"
}

// Recheck asks the Authenticator again about every client connection it
// let in, and closes those it now refuses (their token was revoked, or
// expired). It returns how many it closed. Call it after every change to
// the credentials; it also forgets connections that are gone.
func (s *Server) Recheck() int {
	if s.auth == nil {
		return 0
	}
	live := s.Prune()
	closed := 0
	for id, creds := range live {
		if _, err := s.auth.authenticate(creds); err == nil {
			continue
		}
		if s.srv.DisconnectClientByID(id) == nil {
			closed++
			s.auth.log.Info("closed a NATS client whose credentials are no longer valid", "cid", id)
		}
		s.auth.forget(id)
	}
	return closed
}

// Prune forgets the credentials of connections that have closed (every
// CLI call is one), and returns those of the open ones.
func (s *Server) Prune() map[uint64]Credentials {
	if s.auth == nil {
		return nil
	}
	s.auth.mu.Lock()
	n := len(s.auth.conns)
	s.auth.mu.Unlock()
	open := map[uint64]bool{}
	if cz, err := s.srv.Connz(&server.ConnzOptions{Limit: n + 1024}); err == nil {
		for _, c := range cz.Conns {
			open[c.Cid] = true
		}
	} else {
		return nil
	}
	s.auth.mu.Lock()
	defer s.auth.mu.Unlock()
	live := make(map[uint64]Credentials, len(open))
	for id, c := range s.auth.conns {
		if open[id] {
			live[id] = c
		} else {
			delete(s.auth.conns, id)
		}
	}
	return live
}

func (a *clientAuth) forget(id uint64) {
	a.mu.Lock()
	delete(a.conns, id)
	a.mu.Unlock()
}
