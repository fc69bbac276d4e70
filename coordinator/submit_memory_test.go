package coordinator_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/configs"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// shippedSpec is a shipped run spec as `run submit` sends it.
func shippedSpec(t *testing.T, name string, sets ...string) json.RawMessage {
	t.Helper()
	b, err := configs.Example(name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := runspec.Parse(name+".yaml", b, sets)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Resolve("/", os.ReadFile); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestSubmitRefusesRunsThatDoNotFit: with a GPU worker reporting 80 GiB,
// the 7B LM at optim.zero 0 is refused with the fix named; the shipped
// settings are accepted, and so is any run while no worker of its kind
// reports its memory.
func TestSubmitRefusesRunsThatDoNotFit(t *testing.T) {
	c := startCluster(t, 1)
	leader := c.leader()
	cl := c.client(c.token)
	submit := func(sets ...string) (string, error) {
		rep, err := wire.SubmitRun.Call(context.Background(), cl, &wire.RunSubmitRequest{Spec: shippedSpec(t, "stage2-llama2-7b", sets...)})
		if err != nil {
			return "", err
		}
		return rep.ID, nil
	}
	if _, err := submit("optim.zero=0"); err != nil {
		t.Fatalf("with no worker reporting memory: %v, want accepted", err)
	}

	// A GPU worker that reports 80 GiB (as lavit-worker does from cudaMemGetInfo).
	_, err := wire.Register.Call(context.Background(), &wire.Client{NC: cl.NC, Token: c.token, From: "gpu1"}, &wire.RegisterRequest{
		Instance: "i1", Host: "gpu-host", Device: "cuda:0", Capacity: 1,
		Devices: []wire.Device{{Name: "cpu", Kind: "cpu"}, {Name: "cuda:0", Kind: "cuda", Detail: "NVIDIA H100, 80.0 GiB", MemoryBytes: 80 << 30}},
	})
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "gpu1 registered", func() bool { return workerStates(leader)["gpu1"] != "" })

	_, err = submit("optim.zero=0")
	var werr *wire.Error
	if !errors.As(err, &werr) || werr.Code != wire.CodeBadRequest {
		t.Fatalf("7B at optim.zero 0: %v, want a bad_request refusal", err)
	}
	for _, want := range []string{"run does not fit in device memory: ", " GiB per rank at 16 workers (params ", "> 80.0 GiB on the smallest worker (gpu1, cuda:0); set optim.zero=1 ("} {
		if !strings.Contains(werr.Message, want) {
			t.Errorf("refusal %q does not say %q", werr.Message, want)
		}
	}
	if _, err := submit(); err != nil {
		t.Fatalf("7B with the shipped settings: %v, want accepted", err)
	}
	// A CPU run is not planned against the GPU's memory (no CPU worker reports any).
	if _, err := submit("optim.zero=0", "device=cpu", "collective.backend=ring"); err != nil {
		t.Fatalf("7B on cpu: %v, want accepted", err)
	}
}
