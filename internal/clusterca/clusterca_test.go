package clusterca

import (
	"crypto/tls"
	"errors"
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
		_, serr := handshake(t, server, tc.client)
		if tc.ok && serr != nil {
			t.Errorf("%s: server refused: %v", tc.name, serr)
		}
		if !tc.ok && serr == nil {
			t.Errorf("%s: server accepted", tc.name)
		}
	}
}

// handshake runs one TLS handshake over loopback and returns the
// client's and the server's errors.
func handshake(t *testing.T, server, client *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
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
	c := tls.Client(conn, client)
	clientErr = c.Handshake()
	c.Close()
	return clientErr, <-srvErr
}

// TestClientsPinTheCA: a client that holds the CA (ClientTLS) or only its
// fingerprint (PinnedTLS) accepts this cluster's coordinators and refuses
// another cluster's, including one that shows this cluster's CA
// certificate (public) beside a leaf it signed itself.
func TestClientsPinTheCA(t *testing.T) {
	ca, _ := Derive("the cluster's admin token, 48 hex")
	other, _ := Derive("another cluster's admin token!!")
	leaf, err := ca.Issue("c1")
	if err != nil {
		t.Fatal(err)
	}
	otherLeaf, _ := other.Issue("x")
	impostor := tls.Certificate{Certificate: [][]byte{otherLeaf.Certificate[0], ca.der}, PrivateKey: otherLeaf.PrivateKey}
	pinned := func(fp string) *tls.Config {
		c, err := PinnedTLS(fp)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name   string
		server tls.Certificate
		client *tls.Config
		ok     bool
	}{
		{"holder of the CA", leaf, ca.ClientTLS(), true},
		{"pinned fingerprint", leaf, pinned(ca.Fingerprint()), true},
		{"another cluster's CA", leaf, other.ClientTLS(), false},
		{"another fingerprint", leaf, pinned(other.Fingerprint()), false},
		{"impostor, CA holder", impostor, ca.ClientTLS(), false},
		{"impostor, pinned", impostor, pinned(ca.Fingerprint()), false},
	} {
		cerr, _ := handshake(t, ca.ServerTLS(tc.server), tc.client)
		if tc.ok && cerr != nil {
			t.Errorf("%s: client refused: %v", tc.name, cerr)
		}
		if !tc.ok && !errors.Is(cerr, ErrWrongCluster) {
			t.Errorf("%s: client: %v, want ErrWrongCluster", tc.name, cerr)
		}
	}
	for _, bad := range []string{"", "xyz", ca.Fingerprint()[:62], ca.Fingerprint() + "00"} {
		if _, err := PinnedTLS(bad); err == nil {
			t.Errorf("PinnedTLS(%q) accepted a bad fingerprint", bad)
		}
	}
}
