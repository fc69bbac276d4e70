package coordinator

import (
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	c := DefaultConfig()
	c.NodeID = "c1"
	return c
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // "" means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"empty id", func(c *Config) { c.NodeID = "" }, "--id"},
		{"bad id", func(c *Config) { c.NodeID = "a b" }, "--id"},
		{"bad raft addr", func(c *Config) { c.RaftAddr = "nohost" }, "--raft-addr"},
		{"unspecified raft addr without advertise", func(c *Config) { c.RaftAddr = "0.0.0.0:7000" }, "--raft-advertise"},
		{"unspecified raft addr with advertise", func(c *Config) { c.RaftAddr = "0.0.0.0:7000"; c.RaftAdvertise = "10.0.0.1:7000" }, ""},
		{"advertise unspecified", func(c *Config) { c.RaftAdvertise = "0.0.0.0:7000" }, "unspecified"},
		{"join and peers", func(c *Config) {
			c.Join = "127.0.0.1:8080"
			c.Peers = []string{"c1=127.0.0.1:7000"}
			c.Token = strings.Repeat("t", 16)
		}, "contradict"},
		{"no-bootstrap and join", func(c *Config) { c.NoBootstrap = true; c.Join = "x:1"; c.Token = strings.Repeat("t", 16) }, "contradicts"},
		{"nats-url and routes", func(c *Config) { c.NATSURL = "nats://x:4222"; c.NATSRoutes = []string{"nats-route://y:6222"} }, "contradict"},
		{"plaintext nats with nats-url", func(c *Config) { c.NATSURL = "nats://x:4222"; c.PlaintextNATS = true }, "replaces"},
		{"join without token", func(c *Config) { c.Join = "127.0.0.1:8080" }, "--token"},
		{"peers without token", func(c *Config) { c.Peers = []string{"c1=127.0.0.1:7000"} }, "--token"},
		{"peers without routes", func(c *Config) {
			c.Peers = []string{"c1=127.0.0.1:7000", "c2=127.0.0.1:7001"}
			c.Token = strings.Repeat("t", 16)
		}, "--nats-routes"},
		{"no-bootstrap without routes", func(c *Config) { c.NoBootstrap = true; c.Token = strings.Repeat("t", 16) }, "--nats-routes"},
		{"no-bootstrap with external nats", func(c *Config) {
			c.NoBootstrap = true
			c.Token = strings.Repeat("t", 16)
			c.NATSURL = "nats://127.0.0.1:4222"
		}, ""},
		{"peers without self", func(c *Config) { c.Peers = []string{"c2=127.0.0.1:7001"}; c.Token = strings.Repeat("t", 16) }, "does not list this node"},
		{"peers malformed", func(c *Config) { c.Peers = []string{"c1"}; c.Token = strings.Repeat("t", 16) }, "id=host:port"},
		{"peers duplicate", func(c *Config) {
			c.Peers = []string{"c1=127.0.0.1:7000", "c1=127.0.0.1:7001"}
			c.Token = strings.Repeat("t", 16)
		}, "twice"},
		{"short token", func(c *Config) { c.Token = "abc" }, "too short"},
		{"zero worker timeout", func(c *Config) { c.WorkerTimeout = 0 }, "--worker-timeout"},
		{"timeout under two heartbeats", func(c *Config) { c.WorkerTimeout = 600 * time.Millisecond }, "twice"},
		{"lease over heartbeat timeout", func(c *Config) { c.RaftLeaderLease = 2 * c.RaftHeartbeatTimeout }, "lease"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("valid config refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("invalid config accepted, want error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}
