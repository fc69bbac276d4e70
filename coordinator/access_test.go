package coordinator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// TestMayCall: the policy table. An admin token may call every control
// subject; a worker token only its own lifecycle, reports and reads of
// the run it trains; an unknown role nothing.
func TestMayCall(t *testing.T) {
	for _, tc := range []struct {
		role    Role
		subject string
		want    bool
	}{
		{RoleAdmin, wire.SubjectRunSubmit, true},
		{RoleAdmin, wire.SubjectRaftJoin, true},
		{RoleAdmin, wire.SubjectHeartbeat, true},
		{RoleWorker, wire.SubjectRegister, true},
		{RoleWorker, wire.SubjectHeartbeat, true},
		{RoleWorker, wire.SubjectRendezvous, true},
		{RoleWorker, wire.SubjectCkptPart, true},
		{RoleWorker, wire.SubjectRunShow, true},
		{RoleWorker, wire.SubjectCkptList, true},
		{RoleWorker, wire.SubjectRunSubmit, false},
		{RoleWorker, wire.SubjectRunCancel, false},
		{RoleWorker, wire.SubjectRaftJoin, false},
		{RoleWorker, wire.SubjectRaftRemove, false},
		{RoleWorker, wire.SubjectRaftTransfer, false},
		{RoleWorker, wire.SubjectAnnounce, false},
		{RoleWorker, wire.SubjectWorkers, false},
		{RoleWorker, wire.SubjectStatus, false},
		{"", wire.SubjectHeartbeat, false},
		{RoleAdmin, "_INBOX.x", false},
	} {
		if got := mayCall(tc.role, tc.subject); got != tc.want {
			t.Errorf("mayCall(%q, %s) = %v, want %v", tc.role, tc.subject, got, tc.want)
		}
	}
}

// TestNATSRefusesStrangers: the embedded NATS lets nobody in without a
// valid token (or the coordinators' own credentials), and a token holder
// may neither listen to the control subjects, nor join the leader's queue
// group, nor read other clients' replies, nor publish replies. The node
// keeps serving throughout.
func TestNATSRefusesStrangers(t *testing.T) {
	s, nc := startOne(t)
	url := s.NATSURL()

	// Plaintext: the server wants TLS before anything else; a client that
	// goes on in clear gets no answer and no message.
	t.Run("plaintext", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(url, "tls://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		info, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.Contains(info, `"tls_required":true`) {
			t.Fatalf("INFO %q (%v), want tls_required", info, err)
		}
		fmt.Fprintf(conn, "CONNECT {\"auth_token\":%q}\r\nSUB lavit.v1.> 1\r\nPING\r\n", s.Token())
		rest, _ := io.ReadAll(conn) // until the server closes
		if strings.Contains(string(rest), "PONG") || strings.Contains(string(rest), "MSG") {
			t.Fatalf("a plaintext client was served: %q", rest)
		}
	})
	t.Run("plaintext client library", func(t *testing.T) {
		c, err := nats.Connect(url, append(wire.PlaintextConnectOptions(s.Token()), nats.MaxReconnects(0))...)
		if err == nil {
			c.Close()
			t.Fatal("connected")
		}
	})

	pinned, err := wire.ClientTLS(s.Token())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts []nats.Option
	}{
		{"TLS without a token", nil},
		{"wrong token", []nats.Option{nats.Token("not-the-token-0123456789")}},
		{"coordinator user, wrong password", []nats.Option{nats.UserInfo(coordinatorNATSUser, "guess")}},
		{"coordinator user, the admin token as password", []nats.Option{nats.UserInfo(coordinatorNATSUser, s.Token())}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := nats.Connect(url, append(tc.opts, nats.Secure(pinned), nats.MaxReconnects(0))...)
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Fatalf("connect: %v, want an authorization violation", err)
			}
		})
	}

	// A valid token: what it may not do.
	perms := &testutil.AsyncErrors{}
	admin, err := nats.Connect(url, append(wire.ConnectOptions(s.Token()), nats.ErrorHandler(perms.Handler))...)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, tc := range []struct {
		name string
		try  func() error
		want string
	}{
		{"listen to every control subject", func() error { _, err := admin.Subscribe("lavit.v1.>", func(*nats.Msg) {}); return err },
			`Permissions Violation for Subscription to "lavit.v1.>"`},
		{"join the leader's queue group", func() error {
			_, err := admin.QueueSubscribe(wire.SubjectHeartbeat, wire.LeaderQueue, func(*nats.Msg) {})
			return err
		}, `Permissions Violation for Subscription to "` + wire.SubjectHeartbeat + `"`},
		{"read every reply", func() error { _, err := admin.Subscribe("_INBOX.>", func(*nats.Msg) {}); return err },
			`Permissions Violation for Subscription to "_INBOX.>"`},
		{"answer as the leader", func() error { return admin.Publish(wire.InboxPrefix("someone else")+".x", []byte("{}")) },
			`Permissions Violation for Publish to "` + wire.InboxPrefix("someone else") + `.x"`},
	} {
		if err := tc.try(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		admin.Flush()
		testutil.WaitFor(t, 10*time.Second, tc.name+" refused", func() bool { return perms.Saw(tc.want) })
	}

	// Its own requests still work, on its own inbox; and the node serves.
	c := &wire.Client{NC: admin, Token: s.Token(), From: "test"}
	if _, err := wire.GetStatus.Call(context.Background(), c, &wire.StatusRequest{}); err != nil {
		t.Fatalf("status with the admin token: %v", err)
	}
	c = &wire.Client{NC: nc, Token: s.Token(), From: "test"}
	if _, err := wire.GetStatus.Call(context.Background(), c, &wire.StatusRequest{}); err != nil {
		t.Fatalf("status: %v", err)
	}
}

// TestHTTPStatusNeedsToken: the HTTP API speaks HTTPS only, with a
// certificate of the cluster CA; /v1/status answers only the admin token;
// the probes stay open.
func TestHTTPStatusNeedsToken(t *testing.T) {
	s, _ := startOne(t)
	pinned, err := wire.ClientTLS(s.Token())
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: pinned}}
	get := func(path, token string) int {
		req, err := http.NewRequest("GET", "https://"+s.HTTPAddr()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Plain HTTP is answered with a refusal that says HTTPS, and nothing else.
	resp, err := http.Get("http://" + s.HTTPAddr() + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTPS") {
		t.Errorf("plain HTTP: %d %q, want 400 naming HTTPS", resp.StatusCode, body)
	}
	// A client of another cluster's CA refuses the server.
	other, _ := wire.ClientTLS("another cluster's admin token 0123")
	if _, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: other}}).Get("https://" + s.HTTPAddr() + "/healthz"); err == nil {
		t.Error("a client pinned to another cluster's CA accepted this coordinator")
	}
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/v1/status", "", http.StatusUnauthorized},
		{"/v1/status", "not-the-token-0123456789", http.StatusUnauthorized},
		{"/v1/status", s.Token(), http.StatusOK},
		{"/healthz", "", http.StatusOK},
		{"/readyz", "", http.StatusOK},
	} {
		if got := get(tc.path, tc.token); got != tc.want {
			t.Errorf("GET %s (token %v): %d, want %d", tc.path, tc.token != "", got, tc.want)
		}
	}
}

// TestIssuedTokens: the FSM's token records and how a presented token
// resolves against them: its role while valid; refused when unknown,
// forged (right id, wrong secret), expired or revoked; bad records
// refused by every replica alike.
func TestIssuedTokens(t *testing.T) {
	st := newState()
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	id, token, err := newToken()
	if err != nil {
		t.Fatal(err)
	}
	rec := TokenRecord{ID: id, Role: RoleWorker, Hash: hashToken(token), Created: now, Expires: now.Add(time.Hour)}
	if err := st.applyCreateToken(CreateTokenCmd{Token: rec}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		token string
		at    time.Time
		want  Role
		err   string
	}{
		{"valid", token, now, RoleWorker, ""},
		{"forged secret", tokenPrefix + id + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", now, "", "invalid token"},
		{"unknown id", tokenPrefix + "0123456789ab.secret", now, "", "invalid token"},
		{"expired", token, now.Add(time.Hour), "", "expired"},
	} {
		role, gotID, err := issuedRole(st, tc.token, tc.at)
		if tc.err == "" {
			if err != nil || role != tc.want || gotID != id {
				t.Errorf("%s: %q %q %v, want %q", tc.name, role, gotID, err, tc.want)
			}
		} else if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.err)
		}
	}
	for _, tc := range []struct {
		name string
		rec  TokenRecord
		want string
	}{
		{"duplicate id", rec, "already exists"},
		{"bad role", TokenRecord{ID: "aaaaaaaaaaaa", Role: "root", Hash: rec.Hash}, "role"},
		{"bad id", TokenRecord{ID: "x", Role: RoleWorker, Hash: rec.Hash}, "not 6 hex bytes"},
		{"bad hash", TokenRecord{ID: "aaaaaaaaaaaa", Role: RoleWorker, Hash: "abc"}, "hash"},
	} {
		if err := st.applyCreateToken(CreateTokenCmd{Token: tc.rec}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if err := st.applyRevokeToken(RevokeTokenCmd{ID: id}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := issuedRole(st, token, now); err == nil {
		t.Error("a revoked token still resolves")
	}
	if err := st.applyRevokeToken(RevokeTokenCmd{ID: id}); !errors.Is(err, errNoSuchToken) {
		t.Errorf("revoking twice: %v, want %v", err, errNoSuchToken)
	}
	if issuedTokenID("0123456789abcdef0123456789abcdef") != "" {
		t.Error("an admin-style token was taken for an issued one")
	}
}

// TestPlaintextNATS: with --plaintext-nats the embedded NATS serves
// clients without TLS (a network that encrypts for them): a plaintext
// client with a token is served, one without a token is still refused,
// and a client that insists on TLS is told the server does not speak it.
func TestPlaintextNATS(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir = "c1", t.TempDir()
	cfg.RaftAddr, cfg.HTTPAddr, cfg.NATSAddr, cfg.NATSClusterAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.PlaintextNATS = true
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	testutil.WaitFor(t, 10*time.Second, "leader ready", func() bool { return s.Ready() == "" })
	url := s.NATSURL()
	if !strings.HasPrefix(url, "nats://") {
		t.Fatalf("client URL %s, want nats:// without TLS", url)
	}
	nc, err := nats.Connect(url, wire.PlaintextConnectOptions(s.Token())...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := &wire.Client{NC: nc, Token: s.Token(), From: "test"}
	if _, err := wire.GetStatus.Call(context.Background(), c, &wire.StatusRequest{}); err != nil {
		t.Fatalf("status over plaintext: %v", err)
	}
	if c, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil || !errors.Is(err, nats.ErrAuthorization) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("plaintext without a token: %v, want an authorization violation", err)
	}
	if c, err := nats.Connect(url, append(wire.ConnectOptions(s.Token()), nats.MaxReconnects(0))...); !errors.Is(err, nats.ErrSecureConnWanted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("a TLS client: %v, want nats.ErrSecureConnWanted", err)
	}
}
