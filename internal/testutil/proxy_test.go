package testutil

import (
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes every connection until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends a byte through the proxy and reports whether it came
// back (false: the proxy refused the connection).
func roundTrip(t *testing.T, p *Proxy) bool {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		return false // the reset can come before the dial returns
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute)) // a hang fails, it never passes
	if _, err := c.Write([]byte{42}); err != nil {
		return false
	}
	var b [1]byte
	_, err = io.ReadFull(c, b[:])
	return err == nil && b[0] == 42
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestProxyDownUntilRefused: the proxy refuses exactly n connections, then
// serves again by itself and says so.
func TestProxyDownUntilRefused(t *testing.T) {
	p := StartProxy(t, echoServer(t))
	if !roundTrip(t, p) {
		t.Fatal("the proxy does not forward")
	}
	up := p.DownUntilRefused(3)
	for i := 1; i <= 3; i++ {
		if closed(up) {
			t.Fatalf("back up after %d refusals, want 3", i-1)
		}
		if roundTrip(t, p) {
			t.Fatalf("connection %d got through while the proxy is down", i)
		}
	}
	// The third refusal ended the outage before the client saw it.
	if !closed(up) {
		t.Fatal("still down after 3 refusals")
	}
	if !roundTrip(t, p) {
		t.Fatal("the proxy does not forward after the outage")
	}
	if got := p.Refused(); got != 3 {
		t.Errorf("Refused() = %d, want 3", got)
	}

	// SetDown(false) ends an outage early and wakes its waiters; SetDown(true)
	// stays down however many it refuses.
	up = p.DownUntilRefused(100)
	if roundTrip(t, p) {
		t.Fatal("a connection got through while the proxy is down")
	}
	p.SetDown(false)
	if !closed(up) || !roundTrip(t, p) {
		t.Fatal("SetDown(false) did not end the outage")
	}
	p.SetDown(true)
	for range 3 {
		if roundTrip(t, p) {
			t.Fatal("a connection got through after SetDown(true)")
		}
	}
	if got := p.Refused(); got != 7 {
		t.Errorf("Refused() = %d, want 7", got)
	}
	if up := p.DownUntilRefused(0); !closed(up) || !roundTrip(t, p) {
		t.Error("DownUntilRefused(0) left the proxy down")
	}
}
