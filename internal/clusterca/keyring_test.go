package clusterca

import (
	"crypto/tls"
	"testing"
)

// TestKeyringRotation: coordinators in adjacent phases of a rotation
// (before, during, after) accept each other, so a cluster rotates one
// node at a time; before and after do not, and nothing accepts another
// cluster. Clients pinned to the old CA are accepted until the rotation
// finishes, clients pinned to the new one from its start.
func TestKeyringRotation(t *testing.T) {
	oldCA, _ := Derive("the cluster's admin token, 48 hex")
	newCA, _ := Derive("the cluster's rotated admin token")
	otherCA, _ := Derive("another cluster's admin token!!")
	ring := func(name string, current, next *CA) *Keyring {
		k, err := NewKeyring(name, current)
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Set(current, next); err != nil {
			t.Fatal(err)
		}
		return k
	}
	phases := map[string]*Keyring{
		"before": ring("c1", oldCA, nil),
		"during": ring("c2", oldCA, newCA),
		"after":  ring("c3", newCA, nil),
		"other":  ring("x", otherCA, nil),
	}
	for _, tc := range []struct {
		a, b string
		ok   bool
	}{
		{"before", "before", true},
		{"before", "during", true},
		{"during", "during", true},
		{"during", "after", true},
		{"after", "after", true},
		{"before", "after", false},
		{"other", "before", false},
		{"other", "during", false},
		{"other", "after", false},
	} {
		// Both directions: each side is once the server, once the client.
		for _, dir := range [][2]string{{tc.a, tc.b}, {tc.b, tc.a}} {
			cerr, serr := handshake(t, phases[dir[0]].MutualTLS(), phases[dir[1]].MutualTLS())
			if ok := cerr == nil && serr == nil; ok != tc.ok {
				t.Errorf("server %s, client %s: client %v, server %v; want ok=%v", dir[0], dir[1], cerr, serr, tc.ok)
			}
		}
	}
	pinned := func(ca *CA) *tls.Config {
		c, err := PinnedTLS(ca.Fingerprint())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		phase  string
		pin    *CA
		pinned string
		ok     bool
	}{
		{"before", oldCA, "old", true},
		{"before", newCA, "new", false},
		{"during", oldCA, "old", true},
		{"during", newCA, "new", true},
		{"after", oldCA, "old", false},
		{"after", newCA, "new", true},
	} {
		cerr, _ := handshake(t, phases[tc.phase].ServerTLS(), pinned(tc.pin))
		if ok := cerr == nil; ok != tc.ok {
			t.Errorf("%s, client pinned to the %s CA: %v, want ok=%v", tc.phase, tc.pinned, cerr, tc.ok)
		}
	}
	if got := phases["during"].Signer(); got != newCA {
		t.Error("during a rotation, new tokens should carry the next CA")
	}
}

// TestKeyringChangesLive: a TLS configuration made before Set follows
// it (listeners are never rebuilt), and repeating a Set keeps the leaf.
func TestKeyringChangesLive(t *testing.T) {
	oldCA, _ := Derive("the cluster's admin token, 48 hex")
	newCA, _ := Derive("the cluster's rotated admin token")
	server, _ := NewKeyring("c1", oldCA)
	cfg := server.ServerTLS()
	pinnedNew, _ := PinnedTLS(newCA.Fingerprint())
	if cerr, _ := handshake(t, cfg, pinnedNew); cerr == nil {
		t.Fatal("a client pinned to the next CA was accepted before the rotation")
	}
	if err := server.Set(oldCA, newCA); err != nil {
		t.Fatal(err)
	}
	leaf := server.Chain()[0]
	if cerr, _ := handshake(t, cfg, pinnedNew); cerr != nil {
		t.Fatalf("after Set, the existing configuration still refuses the next CA: %v", cerr)
	}
	if err := server.Set(oldCA, newCA); err != nil {
		t.Fatal(err)
	}
	if string(server.Chain()[0]) != string(leaf) {
		t.Error("repeating Set issued a new leaf")
	}
	if err := server.Set(newCA, nil); err != nil {
		t.Fatal(err)
	}
	if string(server.Chain()[0]) != string(leaf) {
		t.Error("finishing the rotation issued a new leaf, though the signer is the same")
	}
	if n := len(server.Chain()); n != 2 {
		t.Errorf("after the rotation the chain has %d certificates, want the leaf and the CA", n)
	}
}
