package worker

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lavit-org/lavit/collective/ring"
)

func TestStepCommWorldOfOne(t *testing.T) {
	c := newStepComm(nil, time.Second, false)
	buf := []float32{1, 2}
	if err := c.reduce(context.Background(), buf); err != nil || buf[0] != 1 || buf[1] != 2 {
		t.Fatalf("reduce in a world of one: %v %v", buf, err)
	}
	if busy, idle := c.take(); busy != 0 || idle != 0 {
		t.Fatalf("a world of one spent %v + %v in the collective", busy, idle)
	}
	if err := c.agreeOnStep(context.Background(), 0, 1, 40); err != nil {
		t.Fatal(err)
	}
	c.abortWhenDone(context.Background())()
	c.close()
}

// TestStepCommOverTheRing: sums over a real ring of three; the restored
// steps must agree, and a rank that restored another step is named.
func TestStepCommOverTheRing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	comms, err := ring.LocalWorld(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	steps := make([]*stepComm, 3)
	for r, c := range comms {
		steps[r] = newStepComm(c, 10*time.Second, false)
		defer steps[r].close()
	}
	onEach := func(f func(r int, c *stepComm) error) []error {
		errs := make([]error, 3)
		var wg sync.WaitGroup
		for r, c := range steps {
			wg.Go(func() { errs[r] = f(r, c) })
		}
		wg.Wait()
		return errs
	}
	bufs := [][]float32{{1, 10}, {2, 20}, {3, 30}}
	for r, err := range onEach(func(r int, c *stepComm) error { return c.reduce(ctx, bufs[r]) }) {
		if err != nil || bufs[r][0] != 6 || bufs[r][1] != 60 {
			t.Fatalf("rank %d: %v after reduce (%v)", r, bufs[r], err)
		}
		if busy, idle := steps[r].take(); busy+idle <= 0 {
			t.Errorf("rank %d: no collective time recorded", r)
		}
	}
	for r, err := range onEach(func(r int, c *stepComm) error { return c.agreeOnStep(ctx, r, 3, 120) }) {
		if err != nil {
			t.Fatalf("rank %d: the same step disagreed: %v", r, err)
		}
	}
	restored := []int64{120, 80, 120}
	want := []string{"rank 1 restored step 80", "rank 0 restored step 120, this rank step 80", "rank 1 restored step 80"}
	for r, err := range onEach(func(r int, c *stepComm) error { return c.agreeOnStep(ctx, r, 3, restored[r]) }) {
		if err == nil || !strings.Contains(err.Error(), want[r]) {
			t.Errorf("rank %d: %v; want an error containing %q", r, err, want[r])
		}
	}
}

func TestAdvertiseAddr(t *testing.T) {
	tests := []struct {
		name, explicit, listen, coord, want string
	}{
		{"explicit wins", "10.0.0.5:7777", "0.0.0.0:4000", "nats://127.0.0.1:4222", "10.0.0.5:7777"},
		{"a specific listen address is dialable as it is", "", "192.0.2.7:4000", "nats://127.0.0.1:4222", "192.0.2.7:4000"},
		{"unspecified: the address towards the first coordinator", "", "0.0.0.0:4000", "nats://127.0.0.1:4222,nats://127.0.0.2:4222", "127.0.0.1:4000"},
		{"unspecified without a usable coordinator URL", "", "0.0.0.0:4000", "::not a url", "127.0.0.1:4000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := advertiseAddr(tt.explicit, tt.listen, tt.coord)
			if err != nil || got != tt.want {
				t.Fatalf("advertiseAddr = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
