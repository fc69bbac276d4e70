package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/lavit-org/lavit/collective"
)

// Failure handling. Data flows rank → next on each connection; the reverse
// direction carries only notices, so a notice is never stuck behind data.
// A rank that breaks writes one notice (why, and which rank caused it) to
// its previous rank, whose monitor goroutine reads it, breaks that rank
// and forwards the notice on. Notices thus travel backwards around the
// ring and reach every live rank even when one rank is dead, so every
// survivor can name the rank that was lost rather than the neighbour that
// hung up on it. The monitor also turns an EOF from the next rank into
// ErrPeerLost at once, in or out of a call.
//
// Local calls are unblocked by expiring the connections' deadlines; the
// previous connection is closed right after the notice, the next one after
// forwardGrace (or at Close), so that the next rank learns the reason from
// the notices before it sees our end of the data stream go away.

// Notice kinds.
const (
	noticeLost    = 1 // Origin is gone (its process or connection)
	noticeAborted = 2 // Origin gave up (Abort, deadline, mismatch)
	noticeClosed  = 3 // Origin closed its communicator
)

// notice wire format: 'N' | kind u8 | origin u32 | len u16 | text.
type notice struct {
	Kind   byte
	Origin int
	Text   string
}

func (n notice) marshal() []byte {
	text := n.Text
	if len(text) > maxReasonLen {
		text = text[:maxReasonLen]
	}
	b := []byte{'N', n.Kind}
	b = binary.LittleEndian.AppendUint32(b, uint32(n.Origin))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}

func readNotice(r io.Reader) (notice, error) {
	var fixed [8]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return notice{}, err
	}
	if fixed[0] != 'N' {
		return notice{}, fmt.Errorf("garbage on the notice channel (%#x)", fixed[0])
	}
	text := make([]byte, min(int(binary.LittleEndian.Uint16(fixed[6:])), maxReasonLen))
	if _, err := io.ReadFull(r, text); err != nil {
		return notice{}, err
	}
	return notice{Kind: fixed[1], Origin: int(binary.LittleEndian.Uint32(fixed[2:])), Text: string(text)}, nil
}

// noticeFor says what to tell the previous rank about our failure e.
func (c *Comm) noticeFor(e *collective.Error) notice {
	text := e.Kind.Error()
	if e.Err != nil {
		text = e.Err.Error()
	}
	origin := c.rank
	if e.Peer >= 0 {
		origin = e.Peer
	}
	switch {
	case errors.Is(e.Kind, collective.ErrClosed), errors.Is(e.Err, errPeerClosed):
		return notice{Kind: noticeClosed, Origin: origin, Text: errPeerClosed.Error()}
	case errors.Is(e.Kind, collective.ErrPeerLost):
		return notice{Kind: noticeLost, Origin: origin, Text: text}
	case errors.Is(e.Kind, collective.ErrAborted):
		return notice{Kind: noticeAborted, Origin: origin, Text: text}
	}
	// Deadline, cancellation, mismatch: this rank gave up.
	return notice{Kind: noticeAborted, Origin: c.rank, Text: e.Error()}
}

// errorFor turns a notice read from the next rank into our error.
func (c *Comm) errorFor(n notice) *collective.Error {
	e := &collective.Error{Rank: c.rank, Peer: n.Origin, Kind: collective.ErrAborted}
	via := ""
	if n.Origin != c.nextRank {
		via = fmt.Sprintf(" (reported by rank %d)", c.nextRank)
	}
	switch n.Kind {
	case noticeLost:
		e.Kind = collective.ErrPeerLost
		e.Err = fmt.Errorf("rank %d lost%s: %s", n.Origin, via, n.Text)
	case noticeClosed:
		e.Kind = collective.ErrPeerLost
		e.Err = fmt.Errorf("rank %d %w%s", n.Origin, errPeerClosed, via)
	default:
		e.Err = fmt.Errorf("rank %d gave up%s: %s", n.Origin, via, n.Text)
	}
	return e
}

// fail breaks the communicator with e unless it is already broken, and
// returns the sticky error either way.
func (c *Comm) fail(e *collective.Error) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.err = e
	close(c.broken)
	if c.size > 1 {
		past := time.Unix(1, 0)
		c.next.SetWriteDeadline(past) // unblocks our sender
		c.prev.SetReadDeadline(past)  // unblocks our receiver
		c.nextTimer = time.AfterFunc(forwardGrace, func() { c.next.Close() })
	}
	c.mu.Unlock()

	switch {
	case errors.Is(e, collective.ErrClosed):
		c.log.Debug("communicator closed", "err", e)
	case errors.Is(e.Kind, collective.ErrPeerLost) && errors.Is(e.Err, errPeerClosed):
		c.log.Debug("communicator broken: a peer closed", "err", e)
	default:
		c.log.Warn("communicator broken", "err", e)
	}
	if c.size > 1 {
		c.ctlMu.Lock()
		c.prev.SetWriteDeadline(time.Now().Add(noticeTimeout))
		c.prev.Write(c.noticeFor(e).marshal()) // best effort: prev may be dead
		c.ctlMu.Unlock()
		c.prev.Close()
	}
	return e
}

var errPeerClosed = errors.New("closed its communicator")

// monitor reads notices from the next rank for the communicator's life.
func (c *Comm) monitor() {
	defer close(c.monitorDone)
	n, err := readNotice(c.next)
	if err != nil {
		c.fail(&collective.Error{Rank: c.rank, Peer: c.nextRank, Kind: collective.ErrPeerLost,
			Err: fmt.Errorf("connection to next rank: %w", err)})
		return
	}
	c.fail(c.errorFor(n))
}

// Abort breaks the communicator with err: pending and later calls on this
// rank return an error wrapping collective.ErrAborted and err, and the
// other ranks are told. Safe from any goroutine, any number of times.
func (c *Comm) Abort(err error) {
	c.fail(collective.AbortError(c.rank, err))
}

// Close breaks the communicator (later calls return collective.ErrClosed
// unless it was already broken), tells the previous rank, and closes both
// connections. It does not close the Listener.
func (c *Comm) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.fail(&collective.Error{Rank: c.rank, Peer: -1, Kind: collective.ErrClosed})
	if c.size == 1 {
		return nil
	}
	c.mu.Lock()
	c.nextTimer.Stop()
	c.mu.Unlock()
	c.next.Close()
	c.prev.Close()
	<-c.monitorDone
	return nil
}
