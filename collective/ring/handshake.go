package ring

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// The handshake a rank runs with the next one right after dialling. Both
// sides first prove that they hold the generation's secret (Config.Secret,
// which the coordinator hands each member of a generation), and only then
// does either say anything about the ring:
//
//	dialler  → acceptor: "LVRG" | version u16 | dialler nonce [32]
//	acceptor → dialler:  "LVRA" | version u16 | acceptor nonce [32]
//	dialler  → acceptor: size u32 | rank u32 | generation u64 | len u16 | run | dialler MAC [32]
//	acceptor → dialler:  status u8 | on refusal: generation u64 | len u16 | reason | acceptor MAC [32]
//
// The dialler's MAC is HMAC-SHA256(secret, "lavit ring dial" | both nonces
// | its fields); the acceptor's, HMAC-SHA256(secret, "lavit ring accept" |
// both nonces | its answer). A dialler whose MAC does not verify gets
// status statusUnknown and nothing else: no run, no generation, no reason
// (a stranger learns only that a lavit ring listens here). It may be a
// member of another generation, holding that generation's secret, so the
// dialler takes it as "not yet" and dials again until its deadline. An
// acceptor whose MAC does not verify is not a member: the dialler gives
// up. Fresh nonces on both sides make every MAC single-use. All integers
// are little endian.
//
// Protocol versions must not share a ring: 2, the all-reduce's
// reduce-scatter ends with rank r owning segment r (1: r+1), and the
// kinds reducescatter and allgather exist; 3, the call header grows from
// 24 to 40 bytes (a part's offset and whole length, AllReducePart); 4,
// this authenticated handshake. The op sum-bf16 (op byte 2 in the call
// header) needs no new version: a rank that predates it never sends that
// byte, and its call header differs from a rank calling SumBF16, so the
// pair fails with ErrMismatch before any data is misread.
const (
	helloMagic      = "LVRG"
	answerMagic     = "LVRA"
	protocolVersion = 4
	nonceLen        = 32
	macLen          = sha256.Size
	openingLen      = 4 + 2 + nonceLen
	helloFixed      = 4 + 4 + 8 + 2
	maxRunLen       = 256
	maxReasonLen    = 1024
	// handshakeTimeout bounds one handshake. The acceptor runs up to
	// maxPendingHandshakes at once, so silent diallers cannot hold up
	// the previous rank's connection.
	handshakeTimeout     = 2 * time.Second
	maxPendingHandshakes = 8
	// MinSecretLen is the shortest Config.Secret a ring of more than
	// one rank accepts.
	MinSecretLen = 16
)

// Handshake statuses.
const (
	statusAccepted byte = 0
	statusRefused  byte = 1 // an authenticated peer refused: a reason follows
	statusUnknown  byte = 2 // the dialler's MAC did not verify: nothing follows
)

// hello is what a dialling rank says about itself.
type hello struct {
	Size       int
	Rank       int
	Generation uint64
	Run        string
}

// marshal is the hello's fields as the dialler sends them (before its MAC).
func (h hello) marshal() []byte {
	b := make([]byte, 0, helloFixed+len(h.Run))
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Size))
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Rank))
	b = binary.LittleEndian.AppendUint64(b, h.Generation)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.Run)))
	return append(b, h.Run...)
}

// readHello reads the dialler's fields and returns them with their bytes
// (what its MAC covers).
func readHello(r io.Reader) (hello, []byte, error) {
	fixed := make([]byte, helloFixed, helloFixed+maxRunLen)
	if _, err := io.ReadFull(r, fixed); err != nil {
		return hello{}, nil, fmt.Errorf("read handshake: %w", err)
	}
	h := hello{
		Size:       int(binary.LittleEndian.Uint32(fixed[0:])),
		Rank:       int(binary.LittleEndian.Uint32(fixed[4:])),
		Generation: binary.LittleEndian.Uint64(fixed[8:]),
	}
	n := int(binary.LittleEndian.Uint16(fixed[16:]))
	if n > maxRunLen {
		return hello{}, nil, fmt.Errorf("handshake run name of %d bytes (at most %d)", n, maxRunLen)
	}
	raw := fixed[:helloFixed+n]
	if _, err := io.ReadFull(r, raw[helloFixed:]); err != nil {
		return hello{}, nil, fmt.Errorf("read handshake: %w", err)
	}
	h.Run = string(raw[helloFixed:])
	return h, raw, nil
}

// opening is the first message of either side: magic, version, nonce.
func opening(magic string) ([]byte, []byte, error) {
	b := make([]byte, 0, openingLen)
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, protocolVersion)
	nonce := make([]byte, nonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, fmt.Errorf("handshake nonce: %w", err)
	}
	return append(b, nonce...), nonce, nil
}

// readOpening reads the other side's opening: its version and nonce.
func readOpening(r io.Reader, magic string) (version uint16, nonce []byte, err error) {
	var b [openingLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, nil, fmt.Errorf("read handshake: %w", err)
	}
	if string(b[:4]) != magic {
		return 0, nil, errors.New("not a lavit ring peer (bad handshake magic)")
	}
	return binary.LittleEndian.Uint16(b[4:]), b[6:], nil
}

// handshakeMAC is HMAC-SHA256(secret, label | nonces | fields).
func handshakeMAC(secret []byte, label string, firstNonce, secondNonce, fields []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write(firstNonce)
	m.Write(secondNonce)
	m.Write(fields)
	return m.Sum(nil)
}

// checkHello returns why the acceptor with cfg refuses h, or "" to accept.
// Only the previous rank of the same run, generation and size may connect.
func checkHello(h hello, cfg Config) string {
	prev := (cfg.Rank - 1 + cfg.Size) % cfg.Size
	switch {
	case h.Run != cfg.Run:
		return fmt.Sprintf("run %q, this ring is run %q", h.Run, cfg.Run)
	case h.Generation != cfg.Generation:
		return fmt.Sprintf("generation %d, this ring is generation %d (a stale or early rank)", h.Generation, cfg.Generation)
	case h.Size != cfg.Size:
		return fmt.Sprintf("world size %d, this ring has size %d", h.Size, cfg.Size)
	case h.Rank != prev:
		return fmt.Sprintf("rank %d dialled rank %d, which accepts only rank %d (its previous rank)", h.Rank, cfg.Rank, prev)
	}
	return ""
}

// RefusedError is a peer's refusal of our handshake.
type RefusedError struct {
	Peer       int
	Addr       string
	Generation uint64 // the refusing rank's generation
	Reason     string
}

// behind reports whether the refusing rank is in an older generation than
// gen: it has not caught up yet, so dialling again may succeed. Any other
// refusal is final.
func (e *RefusedError) behind(gen uint64) bool { return e.Generation < gen }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("rank %d at %s refused the connection: %s", e.Peer, e.Addr, e.Reason)
}

// errUnknownSecret: the acceptor did not accept our MAC. It may be a rank
// of another generation (another secret) that will catch up, so the
// dialler tries again until its deadline.
var errUnknownSecret = errors.New("it did not accept this generation's ring secret (a rank of another generation, or not a member of this ring)")

// errVersion: the acceptor speaks another protocol version. Final.
var errVersion = errors.New("ring protocol versions differ")

// errBadAcceptor: the acceptor answered without proving it holds the
// secret. Final.
var errBadAcceptor = errors.New("it did not prove it holds this generation's ring secret (not a member of this ring)")

// clientHandshake runs the dialler's half on conn with secret: proves
// itself, sends h, checks the acceptor's proof and verdict.
func clientHandshake(conn net.Conn, h hello, secret []byte, peer int, deadline time.Time) error {
	if d := time.Now().Add(handshakeTimeout); d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	open, ours, err := opening(helloMagic)
	if err != nil {
		return err
	}
	if _, err := conn.Write(open); err != nil {
		return fmt.Errorf("send handshake: %w", err)
	}
	version, theirs, err := readOpening(conn, answerMagic)
	if err != nil {
		return err
	}
	if version != protocolVersion {
		return fmt.Errorf("%w: it speaks %d, this rank %d", errVersion, version, protocolVersion)
	}
	fields := h.marshal()
	msg := append(fields, handshakeMAC(secret, "lavit ring dial", ours, theirs, fields)...)
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("send handshake: %w", err)
	}
	var status [1]byte
	if _, err := io.ReadFull(conn, status[:]); err != nil {
		return fmt.Errorf("read handshake reply: %w", err)
	}
	answer := status[:]
	var refused *RefusedError
	switch status[0] {
	case statusAccepted:
	case statusUnknown:
		return errUnknownSecret
	case statusRefused:
		var fixed [10]byte
		if _, err := io.ReadFull(conn, fixed[:]); err != nil {
			return fmt.Errorf("read handshake refusal: %w", err)
		}
		n := int(binary.LittleEndian.Uint16(fixed[8:]))
		if n > maxReasonLen {
			return fmt.Errorf("handshake refusal of %d bytes (at most %d)", n, maxReasonLen)
		}
		reason := make([]byte, n)
		if _, err := io.ReadFull(conn, reason); err != nil {
			return fmt.Errorf("read handshake refusal: %w", err)
		}
		answer = append(append(answer, fixed[:]...), reason...)
		refused = &RefusedError{Peer: peer, Addr: conn.RemoteAddr().String(),
			Generation: binary.LittleEndian.Uint64(fixed[:8]), Reason: string(reason)}
	default:
		return fmt.Errorf("handshake reply with unknown status %d", status[0])
	}
	mac := make([]byte, macLen)
	if _, err := io.ReadFull(conn, mac); err != nil {
		return fmt.Errorf("read handshake reply: %w", err)
	}
	if !hmac.Equal(mac, handshakeMAC(secret, "lavit ring accept", theirs, ours, answer)) {
		return errBadAcceptor
	}
	if refused != nil {
		return refused
	}
	return nil
}

// serverHandshake runs the acceptor's half on conn: it checks the
// dialler's proof, then its hello against cfg, and answers. decide, when
// the hello is acceptable, says whether to take this connection (false:
// refuse it with taken's reason). It returns the refusal reason ("" when
// accepted), whether the dialler authenticated, and any I/O error.
func serverHandshake(conn net.Conn, cfg Config, deadline time.Time, decide func() (take bool, taken string)) (reason string, authenticated bool, err error) {
	if d := time.Now().Add(handshakeTimeout); d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	version, theirs, err := readOpening(conn, helloMagic)
	if err != nil {
		return "", false, err
	}
	open, ours, err := opening(answerMagic)
	if err != nil {
		return "", false, err
	}
	if _, err := conn.Write(open); err != nil {
		return "", false, err
	}
	if version != protocolVersion {
		return fmt.Sprintf("protocol version %d, this rank speaks %d", version, protocolVersion), false, nil
	}
	h, fields, err := readHello(conn)
	if err != nil {
		return "", false, err
	}
	mac := make([]byte, macLen)
	if _, err := io.ReadFull(conn, mac); err != nil {
		return "", false, fmt.Errorf("read handshake: %w", err)
	}
	if !hmac.Equal(mac, handshakeMAC(cfg.Secret, "lavit ring dial", theirs, ours, fields)) {
		conn.Write([]byte{statusUnknown}) // best effort; nothing else is said
		return "not a member of this generation (its proof of the ring secret did not verify)", false, nil
	}
	reason = checkHello(h, cfg)
	if reason == "" && decide != nil {
		if take, taken := decide(); !take {
			reason = taken
		}
	}
	answer := []byte{statusAccepted}
	if reason != "" {
		answer = refusal(cfg.Generation, reason)
	}
	answer = append(answer, handshakeMAC(cfg.Secret, "lavit ring accept", ours, theirs, answer)...)
	if _, err := conn.Write(answer); err != nil && reason == "" {
		return "", true, err
	}
	return reason, true, nil // a refusal is best effort: the dialler may be gone
}

// refusal encodes a refusing handshake answer (before its MAC).
func refusal(gen uint64, reason string) []byte {
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	msg := []byte{statusRefused}
	msg = binary.LittleEndian.AppendUint64(msg, gen)
	msg = binary.LittleEndian.AppendUint16(msg, uint16(len(reason)))
	return append(msg, reason...)
}
