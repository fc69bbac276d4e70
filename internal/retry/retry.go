// Package retry runs an operation again after transient failures, waiting
// an exponentially growing, jittered time between tries. It is the one
// retry loop of lavit: the worker's connection and registration, checkpoint
// uploads and reports, the leader's manifest writes, joining a cluster and
// S3 requests all use it.
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Backoff describes the waits between tries: the first wait is Initial,
// each next one Multiplier times longer, never more than Max. Each wait is
// jittered down to a random value in [(1−Jitter)·d, d], so a fleet that
// failed together does not retry in lockstep.
type Backoff struct {
	Initial    time.Duration // first wait; 0 means 200 ms
	Max        time.Duration // cap; 0 means 5 s
	Multiplier float64       // growth per try; 0 means 2
	// Jitter is the fraction of each wait that is random: 0 waits exactly
	// d (tests), 0.5 waits d/2..d (the default for NewBackoff), 1 is "full
	// jitter" (0..d).
	Jitter float64
	// MaxTries stops after this many tries (0: until the context ends).
	MaxTries int
}

// Default is the backoff most control-plane loops use: 200 ms doubling to
// 5 s, half of each wait random.
var Default = Backoff{Initial: 200 * time.Millisecond, Max: 5 * time.Second, Multiplier: 2, Jitter: 0.5}

// Waits returns the sequence of waits this backoff produces.
func (b Backoff) Waits() *Waits {
	w := &Waits{b: b}
	if w.b.Initial <= 0 {
		w.b.Initial = 200 * time.Millisecond
	}
	if w.b.Max <= 0 {
		w.b.Max = 5 * time.Second
	}
	if w.b.Multiplier < 1 {
		w.b.Multiplier = 2
	}
	w.b.Jitter = min(max(w.b.Jitter, 0), 1)
	w.cur = w.b.Initial
	return w
}

// Waits is one run of a backoff: each Next is the wait before the next try.
type Waits struct {
	b   Backoff
	cur time.Duration
}

// Next returns the next wait and grows the one after it.
func (w *Waits) Next() time.Duration {
	d := min(w.cur, w.b.Max)
	w.cur = min(time.Duration(float64(w.cur)*w.b.Multiplier), w.b.Max)
	if w.b.Jitter == 0 || d <= 0 {
		return d
	}
	random := time.Duration(float64(d) * w.b.Jitter)
	return d - random + time.Duration(rand.Int64N(int64(random)+1))
}

// permanent marks an error that retrying cannot fix.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent wraps err so that Do returns it at once instead of retrying.
// Do returns the wrapped error itself, not the wrapper.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// Try describes one failed try, for logging.
type Try struct {
	Attempt int           // 1 for the first try
	Wait    time.Duration // how long Do waits before the next one
	Err     error
}

// Do calls op until it returns nil, a Permanent error, b.MaxTries tries
// have failed, or ctx ends. onRetry (may be nil) is called after each
// failed try that will be retried, before the wait. It returns nil, or the
// last error op returned (unwrapped from Permanent), or — when ctx ended
// during a wait — that error joined with ctx's.
func Do(ctx context.Context, b Backoff, op func(attempt int) error, onRetry func(Try)) error {
	waits := b.Waits()
	for attempt := 1; ; attempt++ {
		err := op(attempt)
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.err
		}
		if ctx.Err() != nil || (b.MaxTries > 0 && attempt >= b.MaxTries) {
			return err
		}
		wait := waits.Next()
		if onRetry != nil {
			onRetry(Try{Attempt: attempt, Wait: wait, Err: err})
		}
		if serr := Sleep(ctx, wait); serr != nil {
			return errors.Join(err, serr)
		}
	}
}

// Sleep waits for d or until ctx ends, whichever comes first; it returns
// ctx's error in the second case.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
