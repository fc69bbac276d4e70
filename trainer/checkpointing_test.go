package trainer

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestActivationCheckpointingSameGradients: recomputing every block in
// backward gives the gradients of the plain backward (tiny stage 1 in both
// phases, the tiny LM as gpt, llama and with continuous input), and the
// two models stay together over a few full steps.
func TestActivationCheckpointingSameGradients(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	llama := TinyStage2()
	l := *llama.LM
	l.Arch, l.RopeTheta, l.NormEps = "llama", 10000, 1e-5
	llama.LM = &l
	for _, tc := range []struct {
		name   string
		config Config
		vq     bool // stage 1: VQ on (phase B)
		cont   bool // stage 2: continuous image input
	}{
		{"stage 1 phase A", TinyStage1(), false, false},
		{"stage 1 phase B", TinyStage1(), true, false},
		{"stage 2 gpt", TinyStage2(), false, false},
		{"stage 2 llama", llama, false, false},
		{"stage 2 continuous", TinyStage2Continuous(), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plain, ckpt := newModel(t, lib, tc.config, 3), newModel(t, lib, tc.config, 3)
			if err := ckpt.SetActivationCheckpointing(true); err != nil {
				t.Fatal(err)
			}
			for _, m := range []*Model{plain, ckpt} {
				if tc.vq {
					if err := shortSchedule.EnableVQAt(m, 0); err != nil {
						t.Fatal(err)
					}
				}
				if tc.cont {
					if err := InitVisionFrom(m, tok, t.TempDir()); err != nil {
						t.Fatal(err)
					}
				}
			}
			batch := func(step int64) *Batch {
				if tc.config.Stage == 1 {
					_, b := SyntheticBatch(0, step, 8, 0, 8)
					return b
				}
				b, err := Stage2Batch(tok, TinyVocab(256), 55, 0, step, 8, 0, 8, tc.cont)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			// One backward, gradients compared before any update.
			var grads [2][]float32
			for i, m := range []*Model{plain, ckpt} {
				pre, err := m.StepBegin(batch(0))
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := m.StepFinish(pre); err != nil {
					t.Fatal(err)
				}
				grads[i] = append([]float32(nil), m.Grads()...)
				if err := m.ApplyGrads(8, make([]float32, m.Info().PostStats)); err != nil {
					t.Fatal(err)
				}
			}
			if d := relDiff(grads[1], grads[0]); d > 1e-6 {
				t.Fatalf("checkpointed gradients differ by %.3g relative", d)
			} else {
				t.Logf("gradients: %.3g relative", d)
			}
			for step := int64(1); step < 4; step++ {
				for _, m := range []*Model{plain, ckpt} {
					if _, err := m.Step(context.Background(), batch(step), Local, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
			if d := relDiff(ckpt.Params(), plain.Params()); d > 1e-6 {
				t.Fatalf("parameters differ by %.3g relative after 4 steps", d)
			}
		})
	}
}

// peakLM is a model whose activations dwarf its parameters: rows of 255
// tokens through 8 blocks of width 128 (about 1.7 M parameters).
func peakLM() Config {
	c := TinyStage2()
	c.Text, c.Eval = nil, ""
	c.LM = &LMConfig{Vocab: 512, DModel: 128, Layers: 8, Heads: 8, MLP: 512, MaxLen: 256}
	return c
}

// TestActivationCheckpointingLowersPeakMemory measures how far one
// training step of peakLM on 4 rows of 255 tokens raises the peak resident
// memory (VmHWM) of a fresh process above its resident memory before the
// step, with and without activation checkpointing.
func TestActivationCheckpointingLowersPeakMemory(t *testing.T) {
	peak := func(on bool) int64 {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestPeakMemoryChild$", "-test.v")
		// One malloc arena: Go runs the calls on whichever thread, and with
		// an arena per thread memory freed in one is not reused in another,
		// so the peak would depend on scheduling.
		cmd.Env = append(os.Environ(), "LAVIT_PEAK_CHILD="+strconv.FormatBool(on), "MALLOC_ARENA_MAX=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "PEAK_KB "); ok {
				kb, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return kb
			}
		}
		t.Fatalf("child printed no peak:\n%s", out)
		return 0
	}
	// The kernel's resident-memory count can only miss part of a peak
	// (per-thread counters are folded in lazily): a step's true peak is at
	// least every measurement of it, so each setting is measured four
	// times and its largest taken (without checkpointing this host
	// measures 293 MiB most times and 170 MiB now and then; with it,
	// 99–123 MiB).
	var without, with int64
	for range 4 {
		without, with = max(without, peak(false)), max(with, peak(true))
	}
	t.Logf("a step's peak memory above the model's: %d MiB without, %d MiB with activation checkpointing", without>>10, with>>10)
	if with >= without*3/4 {
		t.Fatalf("checkpointing left the step's peak at %d KiB against %d KiB: want less than three quarters", with, without)
	}
}

// TestPeakMemoryChild is the child process of
// TestActivationCheckpointingLowersPeakMemory (it skips unless asked).
func TestPeakMemoryChild(t *testing.T) {
	mode := os.Getenv("LAVIT_PEAK_CHILD")
	if mode == "" {
		t.Skip("run by TestActivationCheckpointingLowersPeakMemory")
	}
	lib := loadLib(t)
	m := newModel(t, lib, peakLM(), 1)
	if err := m.SetActivationCheckpointing(mode == "true"); err != nil {
		t.Fatal(err)
	}
	b := lmRows([]int64{0, 1, 2, 3}, 255, func(i, k int) int64 { return int64((i*31 + k*7) % 512) })
	// The peak above the resident memory before the step: the step's own
	// working memory (the process's libraries and heap are not in it).
	// Free heap pages go back to the system first (the shim keeps up to
	// 256 MiB of them, which the step would reuse without raising the
	// peak), and the peak restarts from the resident memory now
	// (clear_refs 5), not from whatever loading the model reached.
	trimHeap()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak resident memory: %v", err)
	}
	before := statusKB(t, "VmRSS")
	if _, err := m.Step(context.Background(), b, Local, nil); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("PEAK_KB %d\n", statusKB(t, "VmHWM")-before)
}

// statusKB reads one kB field of /proc/self/status.
func statusKB(t *testing.T, field string) int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// lmRows is a stage-2 batch of len(positions) rows of T tokens, token k of
// row i being token(i, k) and its target token(i, k+1) (every position
// trained).
func lmRows(positions []int64, T int, token func(i, k int) int64) *Batch {
	b := &Batch{GlobalBatch: int64(len(positions)), SeqLen: T, Positions: positions}
	for i := range positions {
		for k := range T {
			b.Tokens = append(b.Tokens, token(i, k))
			b.Targets = append(b.Targets, token(i, k+1))
		}
	}
	return b
}
