package clusterca

import (
	"crypto/tls"
	"net"
	"testing"
)

// TestDeriveIsDeterministic: every holder of the token derives the same
// CA (same certificate bytes); another token, another CA.
func TestDeriveIsDeterministic(t *testing.T) {
	a1, err := Derive("the cluster's admin token, 48 hex")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := Derive("the cluster's admin token, 48 hex")
	b, _ := Derive("another cluster's admin token!!")
	if a1.Fingerprint() != a2.Fingerprint() {
		t.Error("the same token derived two CAs")
	}
	if a1.Fingerprint() == b.Fingerprint() {
		t.Error("two tokens derived the same CA")
	}
	if _, err := Derive("short"); err == nil {
		t.Error("a short token derived a CA")
	}
}

// TestMutualTLS: two coordinators of one CA complete a handshake both
// ways; a peer of another CA, or without a certificate, is refused.
func TestMutualTLS(t *testing.T) {
	ca, _ := Derive("the cluster's admin token, 48 hex")
	other, _ := Derive("another cluster's admin token!!")
	leaf := func(c *CA, name string) tls.Certificate {
		l, err := c.Issue(name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	server := ca.MutualTLS(leaf(ca, "c1"))
	for _, tc := range []struct {
		name   string
		client *tls.Config
		ok     bool
	}{
		{"same cluster", ca.MutualTLS(leaf(ca, "c2")), true},
		{"another cluster's CA", other.MutualTLS(leaf(other, "x")), false},
		{"no certificate", &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}, false},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srvErr := make(chan error, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				srvErr <- err
				return
			}
			s := tls.Server(conn, server)
			srvErr <- s.Handshake()
			s.Close()
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(conn, tc.client)
		c.Handshake()
		serr := <-srvErr
		c.Close()
		ln.Close()
		if tc.ok && serr != nil {
			t.Errorf("%s: server refused: %v", tc.name, serr)
		}
		if !tc.ok && serr == nil {
			t.Errorf("%s: server accepted", tc.name)
		}
	}
}
