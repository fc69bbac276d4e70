// Package ring is lavit's pure-Go collective backend: a bandwidth-optimal,
// pipelined ring all-reduce over TCP. Each rank dials the next rank (rank+1
// mod n) and accepts the previous one; data flows one way around the ring
// and only between neighbours. It runs anywhere (no cgo, no GPU) and is the
// backend for CPU training and for tests. See ../DESIGN.md.
package ring

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/internal/retry"
)

// DefaultChunkBytes is the largest pipeline chunk: the unit that is sent,
// received and added while the next one is on the wire.
const DefaultChunkBytes = 512 << 10

const (
	minChunkBytes  = 64 << 10
	chunksPerSeg   = 8                      // aim for at least this many chunks per segment
	socketBuffer   = 4 << 20                // SO_SNDBUF/SO_RCVBUF request (the kernel may cap it)
	noticeTimeout  = 250 * time.Millisecond // to write a notice
	noticeWait     = 250 * time.Millisecond // for the monitor to read one
	forwardGrace   = 500 * time.Millisecond
	maxDialBackoff = 200 * time.Millisecond
	drainWindow    = 100 * time.Millisecond
)

// Config describes one rank's place in one generation of a ring.
type Config struct {
	Rank int
	Size int
	// Peers holds the listener address of every rank, index = rank. Only
	// Peers[(Rank+1)%Size] is dialled. May be empty when Size is 1.
	Peers []string
	// Run and Generation must match on every rank; a peer from another run
	// or generation is refused at the handshake.
	Run        string
	Generation uint64
	// Secret is the generation's shared secret (at least MinSecretLen
	// bytes when Size > 1; the coordinator hands each member a fresh one
	// per generation): neighbours prove they hold it before they say or
	// accept anything (handshake.go).
	Secret []byte
	// Timeout bounds calls whose ctx has no deadline (default
	// collective.DefaultTimeout), and Connect without one.
	Timeout time.Duration
	// ChunkBytes caps the pipeline chunk (default DefaultChunkBytes).
	ChunkBytes int
	Logger     *slog.Logger
}

func (c *Config) validate() error {
	switch {
	case c.Size < 1:
		return fmt.Errorf("ring: size %d, want ≥ 1", c.Size)
	case c.Rank < 0 || c.Rank >= c.Size:
		return fmt.Errorf("ring: rank %d out of range [0, %d)", c.Rank, c.Size)
	case c.Size > 1 && len(c.Peers) != c.Size:
		return fmt.Errorf("ring: %d peer addresses for size %d", len(c.Peers), c.Size)
	case c.Size > 1 && len(c.Secret) < MinSecretLen:
		return fmt.Errorf("ring: a secret of %d bytes, want at least %d (the generation's ring secret from the rendezvous)", len(c.Secret), MinSecretLen)
	case len(c.Run) > maxRunLen:
		return fmt.Errorf("ring: run name of %d bytes (at most %d)", len(c.Run), maxRunLen)
	case c.ChunkBytes < 0 || c.ChunkBytes%4 != 0:
		return fmt.Errorf("ring: chunk of %d bytes, want a positive multiple of 4", c.ChunkBytes)
	case c.Timeout < 0:
		return fmt.Errorf("ring: negative timeout %s", c.Timeout)
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = DefaultChunkBytes
	}
	if c.ChunkBytes < minChunkBytes {
		c.ChunkBytes = minChunkBytes
	}
	if c.Timeout == 0 {
		c.Timeout = collective.DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Listener accepts this rank's previous neighbour. Create it before the
// rendezvous so its address can be advertised; it may serve successive
// Connects (one at a time, e.g. one per generation) and is closed by its
// owner, not by Comm.Close.
type Listener struct {
	l *net.TCPListener
}

// Listen opens a TCP listener on addr ("127.0.0.1:0", ":7070", …).
func Listen(addr string) (*Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ring: listen %s: %w", addr, err)
	}
	return &Listener{l: l.(*net.TCPListener)}, nil
}

// Addr is the address peers dial.
func (l *Listener) Addr() string { return l.l.Addr().String() }

// Close stops listening.
func (l *Listener) Close() error { return l.l.Close() }

// Comm is one rank of a connected ring. It implements
// collective.Communicator; see the package collective for the rules.
type Comm struct {
	cfg      Config
	log      *slog.Logger
	rank     int
	size     int
	next     *net.TCPConn // we send data; we read notices from the next rank
	prev     *net.TCPConn // we read data; we send notices to the previous rank
	nextRank int
	prevRank int

	// turn serialises calls: a caller holds the call by putting a token in.
	turn chan struct{}
	// Owned by the caller holding turn.
	seq       uint64
	scratch   []float32
	callStart time.Time // when the current call started exchanging

	// lastWait is how long the last call waited for the previous rank's
	// call header: the time spent waiting for a slower peer to arrive
	// (nanoseconds; see LastWait).
	lastWait atomic.Int64

	mu        sync.Mutex
	err       error         // sticky; set once
	broken    chan struct{} // closed when err is set
	callID    uint64
	inCall    bool
	closed    bool
	nextTimer *time.Timer // closes next after forwardGrace

	ctlMu       sync.Mutex // serialises notice writes on prev
	monitorDone chan struct{}
}

var _ collective.Communicator = (*Comm)(nil)

// LastWait is how long the last call waited for the previous rank to
// enter it (its call header to arrive): the idle part of the call, as
// opposed to moving bytes. Zero for a world of one.
func (c *Comm) LastWait() time.Duration { return time.Duration(c.lastWait.Load()) }

// littleEndian: the wire carries float32 in the host's byte order, so only
// little-endian hosts may join a multi-rank ring.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// Connect joins the ring described by cfg: it dials the next rank (retrying
// until ctx ends, since peers start at different times), accepts the
// previous one on l, and checks both handshakes. It returns once both
// neighbour connections are up. With Size 1 there are no sockets and l may
// be nil.
func Connect(ctx context.Context, l *Listener, cfg Config) (*Comm, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Comm{
		cfg:      cfg,
		rank:     cfg.Rank,
		size:     cfg.Size,
		nextRank: (cfg.Rank + 1) % cfg.Size,
		prevRank: (cfg.Rank - 1 + cfg.Size) % cfg.Size,
		turn:     make(chan struct{}, 1),
		broken:   make(chan struct{}),
		log:      cfg.Logger.With("component", "collective/ring", "rank", cfg.Rank, "size", cfg.Size, "generation", cfg.Generation),
	}
	if cfg.Size == 1 {
		return c, nil
	}
	if !littleEndian {
		return nil, errors.New("ring: big-endian hosts are not supported")
	}
	if l == nil {
		return nil, errors.New("ring: Connect needs a Listener when size > 1")
	}
	ctx, cancelTimeout := collective.WithDeadline(ctx, cfg.Timeout)
	defer cancelTimeout()
	ctx, cancel := context.WithCancel(ctx) // the first failure stops the other half
	defer cancel()
	deadline, _ := ctx.Deadline()

	type result struct {
		conn *net.TCPConn
		err  error
	}
	dialed, accepted := make(chan result, 1), make(chan result, 1)
	go func() {
		conn, err := c.dial(ctx, deadline)
		dialed <- result{conn, err}
	}()
	go func() {
		conn, err := c.accept(ctx, l, deadline)
		accepted <- result{conn, err}
	}()
	var errs []error
	for range 2 {
		var r result
		select {
		case r = <-dialed:
			c.next = r.conn
		case r = <-accepted:
			c.prev = r.conn
		}
		if r.err != nil {
			errs = append(errs, r.err)
			cancel()
		}
	}
	if len(errs) > 0 {
		if c.next != nil {
			c.next.Close()
		}
		if c.prev != nil {
			c.prev.Close()
		} else {
			c.refuseWaiting(l, errors.Join(errs...))
		}
		return nil, fmt.Errorf("ring: rank %d of %d (generation %d): %w", c.rank, c.size, cfg.Generation, errors.Join(errs...))
	}
	for _, conn := range []*net.TCPConn{c.next, c.prev} {
		conn.SetNoDelay(true)
		conn.SetReadBuffer(socketBuffer)
		conn.SetWriteBuffer(socketBuffer)
	}
	c.monitorDone = make(chan struct{})
	go c.monitor()
	c.log.Debug("ring connected", "next", c.next.RemoteAddr().String(), "prev", c.prev.RemoteAddr().String())
	return c, nil
}

// dial connects to the next rank and handshakes, retrying until ctx ends
// while the peer is unreachable, still in an older generation, or does not
// take our secret (it may hold another generation's and catch up). Any
// other refusal (we are the stale one, another run, a wrong rank), another
// protocol version, or an acceptor that cannot prove it holds the secret,
// is final.
func (c *Comm) dial(ctx context.Context, deadline time.Time) (*net.TCPConn, error) {
	addr := c.cfg.Peers[c.nextRank]
	h := hello{Size: c.size, Rank: c.rank, Generation: c.cfg.Generation, Run: c.cfg.Run}
	var d net.Dialer
	var conn *net.TCPConn
	err := retry.Do(ctx, retry.Backoff{Initial: 5 * time.Millisecond, Max: maxDialBackoff}, func(int) error {
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		if err = clientHandshake(nc, h, c.cfg.Secret, c.nextRank, deadline); err != nil {
			nc.Close()
			var refused *RefusedError
			switch {
			case errors.As(err, &refused) && !refused.behind(c.cfg.Generation),
				errors.Is(err, errVersion), errors.Is(err, errBadAcceptor):
				return retry.Permanent(fmt.Errorf("rank %d at %s: %w", c.nextRank, addr, err))
			case errors.Is(err, errUnknownSecret):
				return fmt.Errorf("rank %d at %s: %w", c.nextRank, addr, err)
			}
			return err
		}
		conn = nc.(*net.TCPConn)
		return nil
	}, nil)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("dial next rank %d at %s: %w", c.nextRank, addr, err)
	}
	return conn, err
}

// verdict is one connection's handshake outcome in accept.
type verdict struct {
	conn          *net.TCPConn
	reason        string // why it was refused; "" when taken
	authenticated bool   // the dialler proved it holds the secret
	err           error
}

// accept waits on l for the previous rank, refusing anyone else. Up to
// maxPendingHandshakes handshakes run at once, each bounded by
// handshakeTimeout; connections beyond that are closed at once, so
// strangers that connect and say nothing cannot delay the ring.
func (c *Comm) accept(ctx context.Context, l *Listener, deadline time.Time) (*net.TCPConn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conns := make(chan *net.TCPConn)
	acceptErr := make(chan error, 1)
	stopAccepting := c.acceptLoop(ctx, l, deadline, conns, acceptErr)
	defer stopAccepting()

	var mu sync.Mutex
	taken := false
	decide := func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		if taken {
			return false, fmt.Sprintf("rank %d is already connected", c.prevRank)
		}
		taken = true
		return true, ""
	}
	verdicts := make(chan verdict, maxPendingHandshakes)
	pending := 0
	// Handshakes still running when we return close their own
	// connections once done.
	defer func() {
		go func() {
			for range pending {
				if v := <-verdicts; v.conn != nil {
					v.conn.Close()
				}
			}
		}()
	}()
	var refusals []string
	for {
		select {
		case conn := <-conns:
			if pending >= maxPendingHandshakes {
				conn.Close()
				refusals = append(refusals, conn.RemoteAddr().String()+": too many handshakes at once")
				continue
			}
			pending++
			go func() {
				reason, authenticated, err := serverHandshake(conn, c.cfg, deadline, decide)
				if err != nil || reason != "" {
					conn.Close()
					conn = nil
				}
				verdicts <- verdict{conn: conn, reason: reason, authenticated: authenticated, err: err}
			}()
		case v := <-verdicts:
			pending--
			if v.conn != nil {
				return v.conn, nil
			}
			if v.reason != "" {
				refusals = append(refusals, v.reason)
				if v.authenticated {
					c.log.Warn("ring refused a connection", "reason", v.reason)
				} else {
					c.log.Debug("ring refused a connection", "reason", v.reason)
				}
			}
		case err := <-acceptErr:
			msg := fmt.Sprintf("no connection from previous rank %d", c.prevRank)
			if len(refusals) > 0 {
				msg += fmt.Sprintf("; refused %d other(s), last: %s", len(refusals), refusals[len(refusals)-1])
			}
			cause := ctx.Err()
			if cause == nil {
				cause = err
			}
			return nil, fmt.Errorf("%s: %w", msg, cause)
		}
	}
}

// acceptLoop accepts on l until ctx ends or deadline passes, handing each
// connection to conns and the error that ended it to acceptErr. The
// returned stop ends it and waits, and leaves l as it found it (l serves
// the next generation's Connect).
func (c *Comm) acceptLoop(ctx context.Context, l *Listener, deadline time.Time, conns chan<- *net.TCPConn, acceptErr chan<- error) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	done := false
	l.l.SetDeadline(deadline)
	wake := context.AfterFunc(ctx, func() {
		mu.Lock()
		if !done {
			l.l.SetDeadline(time.Unix(1, 0)) // wake Accept now
		}
		mu.Unlock()
	})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		for {
			conn, err := l.l.AcceptTCP()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) || isTimeout(err) {
					acceptErr <- err
					return
				}
				continue // a transient accept error (e.g. EMFILE)
			}
			select {
			case conns <- conn:
			case <-ctx.Done():
				conn.Close()
				acceptErr <- ctx.Err()
				return
			}
		}
	}()
	return func() {
		cancel()
		<-exited
		wake()
		mu.Lock()
		done = true
		l.l.SetDeadline(time.Time{})
		mu.Unlock()
	}
}

// refuseWaiting answers, with our own failure, whoever already dialled
// us within drainWindow: a rank that cannot join tells the one waiting on
// it rather than leave it hanging until its deadline. Only a dialler that
// proves it holds this generation's secret hears why.
func (c *Comm) refuseWaiting(l *Listener, cause error) {
	deadline := time.Now().Add(drainWindow)
	l.l.SetDeadline(deadline)
	defer l.l.SetDeadline(time.Time{})
	reason := fmt.Sprintf("rank %d could not join: %v", c.rank, cause)
	refuse := func() (bool, string) { return false, reason }
	for {
		conn, err := l.l.AcceptTCP()
		if err != nil {
			return
		}
		// A dialler of another run or generation (an early rank of the
		// next one) fails to authenticate and dials again.
		serverHandshake(conn, c.cfg, deadline, refuse)
		conn.Close()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Rank is this rank's index.
func (c *Comm) Rank() int { return c.rank }

// Size is the number of ranks.
func (c *Comm) Size() int { return c.size }

// Err returns the sticky error, or nil while the communicator works.
func (c *Comm) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// NewSecret is a fresh random ring secret (Config.Secret): what the
// coordinator makes for each generation, and tests for their rings.
func NewSecret() []byte {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return b
}

// LocalWorld connects n ranks on 127.0.0.1 inside this process, for tests
// and benchmarks. Close every Comm when done.
func LocalWorld(ctx context.Context, n int) ([]*Comm, error) {
	return localWorld(ctx, n, func(*Config) {})
}

func localWorld(ctx context.Context, n int, edit func(*Config)) ([]*Comm, error) {
	if n < 1 {
		return nil, fmt.Errorf("ring: world of %d ranks", n)
	}
	ls := make([]*Listener, n)
	peers := make([]string, n)
	defer func() {
		for _, l := range ls {
			if l != nil {
				l.Close()
			}
		}
	}()
	for i := range n {
		l, err := Listen("127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls[i], peers[i] = l, l.Addr()
	}
	secret := NewSecret()
	comms := make([]*Comm, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		cfg := Config{Rank: i, Size: n, Peers: peers, Run: "local", Generation: 1, Secret: secret,
			Logger: slog.New(slog.DiscardHandler)}
		edit(&cfg)
		wg.Go(func() { comms[i], errs[i] = Connect(ctx, ls[i], cfg) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, c := range comms {
			if c != nil {
				c.Close()
			}
		}
		return nil, err
	}
	return comms, nil
}
