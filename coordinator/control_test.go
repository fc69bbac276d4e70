package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// rawRequest sends bytes as they are, bypassing the client's encoding.
func rawRequest(t *testing.T, nc *nats.Conn, subject string, data []byte) error {
	t.Helper()
	msg, err := nc.Request(subject, data, 5*time.Second)
	if err != nil {
		return err
	}
	return wire.DecodeReply(subject, msg.Data, &json.RawMessage{})
}

func authJSON(token, from string, extra string) []byte {
	return []byte(`{"v":1,"token":"` + token + `","from":"` + from + `"` + extra + `}`)
}

// TestBadControlMessages: each bad message gets a clear error with a stable
// code, and the cluster keeps serving afterwards.
func TestBadControlMessages(t *testing.T) {
	c := startCluster(t, 1)
	leader := c.leader()
	nc, err := nats.Connect(c.natsURLs(), wire.ConnectOptions(c.token)...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tok := c.token

	// A live worker on host-w1, to collide with.
	startWorker(t, c.natsURLs(), tok, "w1")
	testutil.WaitFor(t, 30*time.Second, "w1 registered", func() bool { return workerStates(leader)["w1"] == wire.WorkerIdle })

	register := func(from, host, instance string, capacity int) []byte {
		b, _ := json.Marshal(wire.RegisterRequest{
			Auth:     wire.Auth{V: wire.Version, Token: tok, From: from},
			Instance: instance, Host: host, Device: "cpu", Capacity: capacity,
		})
		return b
	}
	tests := []struct {
		name     string
		subject  string
		data     []byte
		wantCode string
		wantText string
	}{
		{"malformed json", wire.SubjectHeartbeat, []byte(`{"v":1,"token":`), wire.CodeBadRequest, "malformed"},
		{"not an object", wire.SubjectRegister, []byte(`[1,2,3]`), wire.CodeBadRequest, "malformed"},
		{"trailing garbage", wire.SubjectStatus, append(authJSON(tok, "x", ""), []byte(" junk")...), wire.CodeBadRequest, "trailing"},
		{"empty", wire.SubjectStatus, nil, wire.CodeBadRequest, "empty"},
		{"oversized", wire.SubjectRegister, append(authJSON(tok, "w9", `,"host":"`+strings.Repeat("h", 100<<10)+`"`), '\n'), wire.CodeTooLarge, "limit"},
		{"future version", wire.SubjectStatus, []byte(`{"v":99,"token":"` + tok + `","from":"x"}`), wire.CodeBadVersion, "version 99"},
		{"wrong token", wire.SubjectStatus, authJSON("not-the-token", "x", ""), wire.CodeAuth, "invalid token"},
		{"no token", wire.SubjectHeartbeat, authJSON("", "w1", ""), wire.CodeAuth, "invalid token"},
		{"no sender", wire.SubjectStatus, authJSON(tok, "", ""), wire.CodeBadRequest, "from"},
		{"unknown worker heartbeat", wire.SubjectHeartbeat, authJSON(tok, "ghost", `,"instance":"i"`), wire.CodeUnknown, "not registered"},
		{"unknown worker deregister", wire.SubjectDeregister, authJSON(tok, "ghost", `,"instance":"i"`), wire.CodeUnknown, "ghost"},
		{"invalid worker id", wire.SubjectRegister, register("bad id!", "h", "i", 1), wire.CodeBadRequest, "invalid"},
		{"negative capacity", wire.SubjectRegister, register("w9", "h", "i", -1), wire.CodeBadRequest, "capacity"},
		{"id of a live worker on another host", wire.SubjectRegister, register("w1", "elsewhere", "other", 1), wire.CodeConflict, "in use"},
		{"stale instance heartbeat", wire.SubjectHeartbeat, authJSON(tok, "w1", `,"instance":"not-mine"`), wire.CodeStale, "taken over"},
		{"announce from a non-member", wire.SubjectAnnounce, authJSON(tok, "x", `,"coordinator":{"id":"rogue","raft_addr":"1.2.3.4:7000"}`), wire.CodeBadRequest, "not in the raft configuration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := rawRequest(t, nc, tc.subject, tc.data)
			var werr *wire.Error
			if !errors.As(err, &werr) {
				t.Fatalf("got %v, want a coordinator error %s", err, tc.wantCode)
			}
			if werr.Code != tc.wantCode || !strings.Contains(werr.Message, tc.wantText) {
				t.Fatalf("got %q (%s), want code %s mentioning %q", werr.Message, werr.Code, tc.wantCode, tc.wantText)
			}
		})
	}

	t.Run("over the NATS payload limit", func(t *testing.T) {
		_, err := nc.Request(wire.SubjectRegister, bytes.Repeat([]byte("x"), 2<<20), time.Second)
		if !errors.Is(err, nats.ErrMaxPayload) {
			t.Fatalf("2 MiB message: %v, want ErrMaxPayload", err)
		}
	})

	// The cluster still serves, and nothing bad was committed.
	cl := c.client(tok)
	st, err := wire.GetStatus.Call(context.Background(), cl, &wire.StatusRequest{})
	if err != nil {
		t.Fatalf("status after bad input: %v", err)
	}
	if st.Workers.Total != 1 || workerStates(leader)["w1"] != wire.WorkerIdle {
		t.Fatalf("registry after bad input: %+v, %v; want only w1, IDLE", st.Workers, workerStates(leader))
	}
	startWorker(t, c.natsURLs(), tok, "w2")
	testutil.WaitFor(t, 30*time.Second, "w2 registered after bad input", func() bool { return workerStates(leader)["w2"] == wire.WorkerIdle })
}

// TestWrongTokenWorkerStops: a worker with a wrong token gets a clear,
// fatal error instead of retrying forever: a wrong admin-style token
// pins another CA, so the worker refuses the coordinators before it sends
// the token; a forged worker token of the right cluster is refused by
// the coordinators' NATS.
func TestWrongTokenWorkerStops(t *testing.T) {
	c := startCluster(t, 1)
	ca, err := clusterca.Derive(c.token)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token, want string
	}{
		{"another cluster's", "definitely-the-wrong-token", "not a coordinator of this token's cluster"},
		{"forged worker token", "lavit.0123456789ab.forgedsecretforgedsecretforgedsecretforged." + ca.Fingerprint(), "refused this worker's token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := startWorker(t, c.natsURLs(), tc.token, "w1")
			select {
			case err := <-w.done:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Run returned %v, want %q", err, tc.want)
				}
				w.done <- err
			case <-time.After(10 * time.Second):
				t.Fatal("worker with a wrong token kept running")
			}
			if len(workerStates(c.leader())) != 0 {
				t.Fatal("a worker with a wrong token was registered")
			}
		})
	}
}
