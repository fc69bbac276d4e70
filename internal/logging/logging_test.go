package logging

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLogAdapterFiltersAndNames(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, Options{Level: "debug", Format: "text"})
	if err != nil {
		t.Fatal(err)
	}
	h := HCLog(l, "raft", hclog.Warn)
	h.Info("chatty")
	h.Warn("heartbeat timeout", "peer", "c2")
	h.Named("snap").Error("disk full")
	out := buf.String()
	if strings.Contains(out, "chatty") {
		t.Error("info passed a warn-level adapter")
	}
	if !strings.Contains(out, "heartbeat timeout") || !strings.Contains(out, "peer=c2") || !strings.Contains(out, "component=raft") {
		t.Errorf("warn line missing or without attributes: %q", out)
	}
	if !strings.Contains(out, "component=raft.snap") {
		t.Errorf("named logger lost its name: %q", out)
	}
}

func TestNewRejectsUnknown(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, Options{Level: "loud"}); err == nil {
		t.Error("unknown level accepted")
	}
	if _, err := New(&bytes.Buffer{}, Options{Format: "xml"}); err == nil {
		t.Error("unknown format accepted")
	}
}
