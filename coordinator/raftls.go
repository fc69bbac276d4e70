package coordinator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStreamLayer carries raft between coordinators over mutual TLS with
// the cluster CA's certificates (internal/clusterca): a process without
// one cannot complete the handshake, so it can neither send AppendEntries
// or InstallSnapshot nor read the log. Handshakes run concurrently (at
// most maxRaftHandshakes at once, each bounded in time), and only a
// connection whose handshake succeeded reaches raft.
type tlsStreamLayer struct {
	ln        net.Listener // a tls.Listener
	advertise net.Addr
	config    *tls.Config
	ready     chan net.Conn
	done      chan struct{}
	acceptErr error // set before done is closed
}

const (
	maxRaftHandshakes    = 64
	raftHandshakeTimeout = 10 * time.Second
)

// newTLSStreamLayer listens on bindAddr. advertise (nil: the bound
// address) is what peers dial; it must not be an unspecified address.
func newTLSStreamLayer(bindAddr string, advertise net.Addr, config *tls.Config) (*tlsStreamLayer, error) {
	ln, err := net.Listen("tcp", bindAddr)
	if err != nil {
		return nil, err
	}
	addr := advertise
	if addr == nil {
		addr = ln.Addr()
	}
	if tcp, ok := addr.(*net.TCPAddr); !ok || tcp.IP == nil || tcp.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft address %s is not one peers can dial (set --raft-advertise)", addr)
	}
	t := &tlsStreamLayer{ln: tls.NewListener(ln, config), advertise: addr, config: config,
		ready: make(chan net.Conn), done: make(chan struct{})}
	go t.acceptLoop()
	return t, nil
}

// acceptLoop accepts connections and hands each whose handshake succeeds
// to Accept.
func (t *tlsStreamLayer) acceptLoop() {
	slots := make(chan struct{}, maxRaftHandshakes)
	for {
		c, err := t.ln.Accept()
		if err != nil {
			t.acceptErr = err
			close(t.done)
			return
		}
		select {
		case slots <- struct{}{}:
		default:
			c.Close() // too many handshakes at once
			continue
		}
		go func() {
			defer func() { <-slots }()
			tc := c.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(raftHandshakeTimeout))
			if err := tc.Handshake(); err != nil {
				c.Close() // not a coordinator of this cluster: raft never sees it
				return
			}
			tc.SetDeadline(time.Time{})
			select {
			case t.ready <- tc:
			case <-t.done:
				c.Close()
			}
		}()
	}
}

// Accept implements net.Listener: the next connection that completed
// its handshake.
func (t *tlsStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-t.ready:
		return c, nil
	case <-t.done:
		return nil, t.acceptErr
	}
}

// Close implements net.Listener.
func (t *tlsStreamLayer) Close() error { return t.ln.Close() }

// Addr implements net.Listener: the advertised address.
func (t *tlsStreamLayer) Addr() net.Addr { return t.advertise }

// Dial implements raft.StreamLayer.
func (t *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(address), t.config)
	if err != nil {
		var rec tls.RecordHeaderError
		if errors.As(err, &rec) {
			return nil, fmt.Errorf("raft peer %s does not speak TLS (a coordinator of an older build, or not a coordinator): %w", address, err)
		}
		return nil, err
	}
	return c, nil
}
