package testutil

import (
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// AsyncErrors collects a NATS connection's asynchronous errors (the
// permission violations a server reports after a publish or subscribe);
// pass Handler to nats.ErrorHandler.
type AsyncErrors struct {
	mu   sync.Mutex
	errs []string
}

// Handler records err.
func (a *AsyncErrors) Handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	a.mu.Lock()
	a.errs = append(a.errs, err.Error())
	a.mu.Unlock()
}

// Saw reports whether an error containing s has arrived.
func (a *AsyncErrors) Saw(s string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.errs {
		if strings.Contains(e, s) {
			return true
		}
	}
	return false
}
