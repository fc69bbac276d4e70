package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// flatState is a format-1 state holding params alone (the shim's layout:
// checkpoint/state.go), sealed with its FNV-1a checksum.
func flatState(params []float32) []byte {
	b := []byte("LAVITST1")
	b = binary.LittleEndian.AppendUint32(b, checkpoint.StateFormat)
	b = binary.LittleEndian.AppendUint32(b, 1) // stage
	b = binary.LittleEndian.AppendUint64(b, 7) // adam_t
	b = binary.LittleEndian.AppendUint64(b, 6) // step
	b = append(b, 1, 0)
	b = binary.LittleEndian.AppendUint32(b, 1) // one tensor
	b = binary.LittleEndian.AppendUint32(b, uint32(len("params")))
	b = append(b, "params"...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(params)))
	for _, v := range params {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return binary.LittleEndian.AppendUint32(b, fnv1a(b))
}

// fnv1a is a format-1 state's checksum.
func fnv1a(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

// writeCkpt writes state as a one-part checkpoint whose manifest has the
// given parameter table, bypassing WriteManifest's validation (as a
// damaged or hostile store would), and returns its URL and what raft
// would have committed for it.
func writeCkpt(t *testing.T, state []byte, params []checkpoint.ParamInfo) (string, checkpoint.Committed) {
	t.Helper()
	dir := "file://" + filepath.Join(t.TempDir(), "step")
	p, err := checkpoint.WritePart(context.Background(), dir, state, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := checkpoint.Manifest{Format: 1, Run: "r", Step: 5, World: 1, StateBytes: int64(len(state)),
		StateSHA256: checkpoint.SHA256(state), Parts: []checkpoint.Part{p}, Params: params}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(strings.TrimPrefix(dir, "file://"), checkpoint.ManifestName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, checkpoint.Committed{Step: m.Step, ManifestSHA256: checkpoint.SHA256(b), StateSHA256: m.StateSHA256}
}

// TestExportRefusesBadParams: `ckpt export` of a checkpoint whose
// parameter table does not fit its state is an error naming the
// parameter and the problem (a negative numel used to panic it), and
// leaves no file behind; a good table exports.
func TestExportRefusesBadParams(t *testing.T) {
	state := flatState([]float32{1, 2, 3, 4, 5, 6})
	good := []checkpoint.ParamInfo{{Name: "w", Shape: []int64{2, 2}, Offset: 0, Numel: 4}, {Name: "b", Shape: []int64{2}, Offset: 4, Numel: 2}}
	cases := []struct {
		name  string
		param checkpoint.ParamInfo
		want  string
	}{
		{"negative numel", checkpoint.ParamInfo{Name: "x", Shape: []int64{3}, Offset: 4, Numel: -3}, `parameter "x": numel -3 is negative`},
		{"overflowing numel", checkpoint.ParamInfo{Name: "x", Shape: []int64{math.MaxInt64}, Offset: 1, Numel: math.MaxInt64}, `parameter "x": [1, +9223372036854775807) lies outside`},
		// Inside what the manifest's state_bytes allows (state_bytes/4),
		// outside the state's actual params tensor: found by the export.
		{"past the params", checkpoint.ParamInfo{Name: "x", Shape: []int64{4}, Offset: 4, Numel: 4}, `export: parameter "x": [4, +4) lies outside the 6 params`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, want := writeCkpt(t, state, append(append([]checkpoint.ParamInfo(nil), good...), tc.param))
			outDir := t.TempDir()
			out := filepath.Join(outDir, "w.safetensors")
			_, err := exportCkpt(context.Background(), dir, want, out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(outDir); len(entries) != 0 {
				t.Fatalf("left %v behind", entries)
			}
		})
	}
	out := filepath.Join(t.TempDir(), "w.safetensors")
	dir, want := writeCkpt(t, state, good)
	if _, err := exportCkpt(context.Background(), dir, want, out); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(out); err != nil || !bytes.Contains(b, []byte(`"w"`)) {
		t.Fatalf("exported %q, %v", b, err)
	}
}

// TestVerifyRefusesATruncatedState: `ckpt verify` of a checkpoint whose
// parts are intact but whose state is cut short (a numel past its end)
// says it is corrupt.
func TestVerifyRefusesATruncatedState(t *testing.T) {
	state := flatState([]float32{1, 2, 3})
	binary.LittleEndian.PutUint64(state[8+4+4+8+8+2+4+4+6:], 4) // numel 4, three values
	binary.LittleEndian.PutUint32(state[len(state)-4:], fnv1a(state[:len(state)-4]))
	dir, want := writeCkpt(t, state, nil)
	_, err := verifyCkpt(context.Background(), dir, want)
	if !errors.Is(err, checkpoint.ErrCorrupt) || !strings.Contains(err.Error(), `state tensor "params": numel 4 exceeds`) {
		t.Fatalf("got %v, want ErrCorrupt naming the numel", err)
	}
	dir, want = writeCkpt(t, flatState([]float32{1, 2, 3}), nil)
	if _, err := verifyCkpt(context.Background(), dir, want); err != nil {
		t.Fatalf("a good checkpoint: %v", err)
	}
}

// saveStep writes state as step's one-part checkpoint of run "r" under
// root, as the leader does, and returns what raft lists for it.
func saveStep(t *testing.T, root string, step int64, state []byte) wire.CheckpointInfo {
	t.Helper()
	ctx := context.Background()
	dir := checkpoint.Dir("file://"+root, "r", step)
	p, err := checkpoint.WritePartAt(ctx, dir, state, 0, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := &checkpoint.Manifest{Format: 1, Run: "r", Step: step, World: 1, StateBytes: int64(len(state)), StateSHA256: checkpoint.SHA256(state),
		Parts: []checkpoint.Part{p}, Params: []checkpoint.ParamInfo{{Name: "w", Shape: []int64{3}, Numel: 3}}}
	if err := checkpoint.WriteManifest(ctx, dir, m); err != nil {
		t.Fatal(err)
	}
	sum, err := checkpoint.ManifestSHA256(m)
	if err != nil {
		t.Fatal(err)
	}
	return wire.CheckpointInfo{Step: step, Committed: true, World: 1, URL: dir, StateBytes: m.StateBytes, StateSHA256: m.StateSHA256, ManifestSHA256: sum}
}

// flagContext is a cli.Context for the ckpt commands with --sha256 set to
// sha (unset when empty).
func flagContext(t *testing.T, sha string) *cli.Context {
	t.Helper()
	set := flag.NewFlagSet("verify", flag.ContinueOnError)
	if err := sha256Flag.Apply(set); err != nil {
		t.Fatal(err)
	}
	if sha != "" {
		if err := set.Set("sha256", sha); err != nil {
			t.Fatal(err)
		}
	}
	return cli.NewContext(cli.NewApp(), set, nil)
}

// TestVerifyAndExportRefuseAnotherCheckpoint: with step 10's checkpoint
// (manifest and part) copied over step 20's, `ckpt verify` and `ckpt
// export` of step 20 refuse it, naming the step and both digests, whether
// the manifest's sha256 comes from raft or from --sha256, and, for a
// checkpoint committed before raft recorded it, by its step; export
// writes nothing. The untouched checkpoint verifies and exports.
func TestVerifyAndExportRefuseAnotherCheckpoint(t *testing.T) {
	cases := []struct {
		name     string
		copied   bool
		fromRaft bool   // raft lists the manifest's sha256
		flag     string // --sha256: "committed" for step 20's, "other" for step 10's
		errs     []string
	}{
		{"untouched", false, true, "", nil},
		{"untouched, --sha256 agrees", false, true, "committed", nil},
		{"untouched, committed before the sha256 was, --sha256 given", false, false, "committed", nil},
		{"copied over", true, true, "", []string{"checkpoint at step 20", "not the committed one", "it says step 10", "raft committed <20>"}},
		{"copied over, --sha256 given", true, false, "committed", []string{"checkpoint at step 20", "raft committed <20>", "its sha256 is <10>"}},
		{"copied over, committed before the sha256 was", true, false, "", []string{"checkpoint at step 20", "it is the manifest of step 10"}},
		{"--sha256 differs from raft's", false, true, "other", []string{"checkpoint at step 20: --sha256 <10>, raft committed the manifest's sha256 as <20>"}},
	}
	for _, tc := range cases {
		for _, cmd := range []string{"verify", "export"} {
			t.Run(cmd+"/"+tc.name, func(t *testing.T) {
				root := t.TempDir()
				k10 := saveStep(t, root, 10, flatState([]float32{1, 2, 3}))
				k20 := saveStep(t, root, 20, flatState([]float32{4, 5, 6}))
				if tc.copied {
					testutil.ReplaceDir(t, strings.TrimPrefix(k10.URL, "file://"), strings.TrimPrefix(k20.URL, "file://"))
				}
				listed := k20
				if !tc.fromRaft {
					listed.ManifestSHA256 = ""
				}
				flagValue := map[string]string{"": "", "committed": k20.ManifestSHA256, "other": k10.ManifestSHA256}[tc.flag]
				outDir := t.TempDir()
				out := filepath.Join(outDir, "w.safetensors")
				want, err := committedCkpt(flagContext(t, flagValue), listed)
				if err == nil {
					if cmd == "verify" {
						_, err = verifyCkpt(context.Background(), listed.URL, want)
					} else {
						_, err = exportCkpt(context.Background(), listed.URL, want, out)
					}
				}
				if tc.errs == nil {
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				if err == nil {
					t.Fatalf("accepted; want an error saying %q", tc.errs)
				}
				for _, s := range tc.errs {
					s = strings.NewReplacer("<10>", k10.ManifestSHA256, "<20>", k20.ManifestSHA256).Replace(s)
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not say %q", err, s)
					}
				}
				if entries, _ := os.ReadDir(outDir); len(entries) != 0 {
					t.Errorf("export left %v behind", entries)
				}
			})
		}
	}
}

// TestSHA256FlagIsChecked: --sha256 must be 64 hex digits (a usage error
// otherwise).
func TestSHA256FlagIsChecked(t *testing.T) {
	for _, bad := range []string{"abc", strings.Repeat("g", 64), strings.Repeat("a", 65)} {
		_, err := committedCkpt(flagContext(t, bad), wire.CheckpointInfo{Step: 20})
		var ue cliutil.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "is not a sha256") {
			t.Errorf("--sha256 %q: %v, want a usage error", bad, err)
		}
	}
}
