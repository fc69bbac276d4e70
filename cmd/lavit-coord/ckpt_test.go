package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/checkpoint"
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
// damaged or hostile store would), and returns its URL.
func writeCkpt(t *testing.T, state []byte, params []checkpoint.ParamInfo) string {
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
	return dir
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
			dir := writeCkpt(t, state, append(append([]checkpoint.ParamInfo(nil), good...), tc.param))
			outDir := t.TempDir()
			out := filepath.Join(outDir, "w.safetensors")
			_, err := exportCkpt(context.Background(), dir, out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(outDir); len(entries) != 0 {
				t.Fatalf("left %v behind", entries)
			}
		})
	}
	out := filepath.Join(t.TempDir(), "w.safetensors")
	if _, err := exportCkpt(context.Background(), writeCkpt(t, state, good), out); err != nil {
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
	_, err := verifyCkpt(context.Background(), writeCkpt(t, state, nil))
	if !errors.Is(err, checkpoint.ErrCorrupt) || !strings.Contains(err.Error(), `state tensor "params": numel 4 exceeds`) {
		t.Fatalf("got %v, want ErrCorrupt naming the numel", err)
	}
	if _, err := verifyCkpt(context.Background(), writeCkpt(t, flatState([]float32{1, 2, 3}), nil)); err != nil {
		t.Fatalf("a good checkpoint: %v", err)
	}
}
