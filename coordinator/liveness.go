package coordinator

import (
	"sync"
	"time"
)

// liveness is the leader's in-memory record of when each worker last
// heartbeated. It is never replicated: a new leader starts every known
// worker's clock at the moment it takes over, so a leader change never
// marks a worker lost by itself.
type liveness struct {
	mu       sync.Mutex
	lastSeen map[string]time.Time
}

func newLiveness() *liveness {
	return &liveness{lastSeen: map[string]time.Time{}}
}

// reset starts tracking exactly ids, all seen at now.
func (l *liveness) reset(ids []string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastSeen = make(map[string]time.Time, len(ids))
	for _, id := range ids {
		l.lastSeen[id] = now
	}
}

// seen records a heartbeat.
func (l *liveness) seen(id string, now time.Time) {
	l.mu.Lock()
	l.lastSeen[id] = now
	l.mu.Unlock()
}

// forget stops tracking a worker (it left).
func (l *liveness) forget(id string) {
	l.mu.Lock()
	delete(l.lastSeen, id)
	l.mu.Unlock()
}

// last returns when id was last seen.
func (l *liveness) last(id string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.lastSeen[id]
	return t, ok
}

// expired returns, among candidates, the workers not seen for longer than
// timeout. A candidate never seen starts its clock now instead.
func (l *liveness) expired(candidates []string, now time.Time, timeout time.Duration) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, id := range candidates {
		t, ok := l.lastSeen[id]
		if !ok {
			l.lastSeen[id] = now
			continue
		}
		if now.Sub(t) > timeout {
			out = append(out, id)
		}
	}
	return out
}
