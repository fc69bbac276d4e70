package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// The handshake a rank sends to the next one right after dialling:
//
//	magic "LVRG" | version u16 | size u32 | rank u32 | generation u64 | len u16 | run
//
// The acceptor answers one status byte (0 = accepted), followed on refusal
// by its generation u64 | len u16 | reason, and closes the connection. All
// integers are little endian. protocolVersion 2: the all-reduce's
// reduce-scatter ends with rank r owning segment r (version 1: r+1), and
// the call kinds reducescatter and allgather exist. Version 3: the call
// header grows from 24 to 40 bytes (a part's offset and whole length,
// AllReducePart). Versions must not share a ring. The op sum-bf16 (op byte 2 in the call header) needs
// no new version: a rank that predates it never sends that byte, and its
// call header differs from a rank calling SumBF16, so the pair fails with
// ErrMismatch before any data is misread.
const (
	helloMagic      = "LVRG"
	protocolVersion = 3
	helloFixed      = 4 + 2 + 4 + 4 + 8 + 2
	maxRunLen       = 256
	maxReasonLen    = 1024
	// handshakeTimeout bounds one handshake, so a silent dialler cannot
	// hold the accept loop.
	handshakeTimeout = 5 * time.Second
)

// hello is what a dialling rank says about itself.
type hello struct {
	Version    uint16
	Size       int
	Rank       int
	Generation uint64
	Run        string
}

func (h hello) marshal() []byte {
	b := make([]byte, 0, helloFixed+len(h.Run))
	b = append(b, helloMagic...)
	b = binary.LittleEndian.AppendUint16(b, h.Version)
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Size))
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Rank))
	b = binary.LittleEndian.AppendUint64(b, h.Generation)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.Run)))
	return append(b, h.Run...)
}

// readHello reads a hello; anything that is not one is an error.
func readHello(r io.Reader) (hello, error) {
	var fixed [helloFixed]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return hello{}, fmt.Errorf("read handshake: %w", err)
	}
	if string(fixed[:4]) != helloMagic {
		return hello{}, errors.New("not a lavit ring peer (bad handshake magic)")
	}
	h := hello{
		Version:    binary.LittleEndian.Uint16(fixed[4:]),
		Size:       int(binary.LittleEndian.Uint32(fixed[6:])),
		Rank:       int(binary.LittleEndian.Uint32(fixed[10:])),
		Generation: binary.LittleEndian.Uint64(fixed[14:]),
	}
	n := int(binary.LittleEndian.Uint16(fixed[22:]))
	if n > maxRunLen {
		return hello{}, fmt.Errorf("handshake run name of %d bytes (at most %d)", n, maxRunLen)
	}
	run := make([]byte, n)
	if _, err := io.ReadFull(r, run); err != nil {
		return hello{}, fmt.Errorf("read handshake: %w", err)
	}
	h.Run = string(run)
	return h, nil
}

// checkHello returns why the acceptor with cfg refuses h, or "" to accept.
// Only the previous rank of the same run, generation and size may connect.
func checkHello(h hello, cfg Config) string {
	prev := (cfg.Rank - 1 + cfg.Size) % cfg.Size
	switch {
	case h.Version != protocolVersion:
		return fmt.Sprintf("protocol version %d, this rank speaks %d", h.Version, protocolVersion)
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

// clientHandshake sends our hello on conn and reads the verdict.
func clientHandshake(conn net.Conn, h hello, peer int, deadline time.Time) error {
	if d := time.Now().Add(handshakeTimeout); d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(h.marshal()); err != nil {
		return fmt.Errorf("send handshake: %w", err)
	}
	var status [1]byte
	if _, err := io.ReadFull(conn, status[:]); err != nil {
		return fmt.Errorf("read handshake reply: %w", err)
	}
	if status[0] == 0 {
		return nil
	}
	var fixed [10]byte
	if _, err := io.ReadFull(conn, fixed[:]); err != nil {
		return fmt.Errorf("read handshake refusal: %w", err)
	}
	reason := make([]byte, min(int(binary.LittleEndian.Uint16(fixed[8:])), maxReasonLen))
	if _, err := io.ReadFull(conn, reason); err != nil {
		return fmt.Errorf("read handshake refusal: %w", err)
	}
	return &RefusedError{Peer: peer, Addr: conn.RemoteAddr().String(),
		Generation: binary.LittleEndian.Uint64(fixed[:8]), Reason: string(reason)}
}

// serverHandshake reads a hello on conn, answers, and returns the refusal
// reason ("" when accepted) or an I/O error.
func serverHandshake(conn net.Conn, cfg Config, deadline time.Time) (string, error) {
	if d := time.Now().Add(handshakeTimeout); d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	h, err := readHello(conn)
	if err != nil {
		return "", err
	}
	reason := checkHello(h, cfg)
	if reason == "" {
		_, err := conn.Write([]byte{0})
		return "", err
	}
	conn.Write(refusal(cfg.Generation, reason)) // best effort: the dialler may be gone
	return reason, nil
}

// refusal encodes a refusing handshake reply.
func refusal(gen uint64, reason string) []byte {
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	msg := []byte{1}
	msg = binary.LittleEndian.AppendUint64(msg, gen)
	msg = binary.LittleEndian.AppendUint16(msg, uint16(len(reason)))
	return append(msg, reason...)
}
