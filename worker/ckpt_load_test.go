package worker

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strconv"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/trainer"
)

// hostileBlocked is a blocked state header (stage 2, no codebook) with the
// given sizes and a valid CRC-32C, followed by pad zero bytes: what a
// crafted checkpoint could hold.
func hostileBlocked(P, block uint64, blocks uint32, pad int) []byte {
	b := []byte("LAVITST1")
	b = binary.LittleEndian.AppendUint32(b, checkpoint.StateFormatBlocked)
	b = binary.LittleEndian.AppendUint32(b, 2) // stage
	b = binary.LittleEndian.AppendUint64(b, 1) // adam_t
	b = binary.LittleEndian.AppendUint64(b, 1) // step
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, P)
	b = binary.LittleEndian.AppendUint64(b, block)
	b = binary.LittleEndian.AppendUint32(b, blocks)
	b = binary.LittleEndian.AppendUint64(b, 0) // codebook numel
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
	return append(b, make([]byte, pad)...)
}

// TestRestoreChecksTheStateInGoFirst: a fetched state is checked in Go
// (checkpoint.CheckState) before the shim's loader sees it: crafted sizes
// (blocks × block overflowing, a count past the bytes, a truncated blob)
// are refused with an error naming the step and the problem, and the
// model is left as it was; the model's own state loads.
func TestRestoreChecksTheStateInGoFirst(t *testing.T) {
	lib := shim(t)
	m := model(t, lib, trainer.TinyStage2())
	good, err := m.State()
	if err != nil {
		t.Fatal(err)
	}
	before := append([]float32(nil), m.Params()...)
	cases := []struct {
		name  string
		state []byte
		want  string
	}{
		{"blocks × block overflows", hostileBlocked(8, 1<<62, 4, 4*16), "4 blocks of 4611686018427387904 values overflow"},
		{"a block count past the bytes", hostileBlocked(8, 8, 1<<31, 16), "block count 2147483648 exceeds what the 20 bytes left can hold"},
		{"a parameter count past the bytes", hostileBlocked(1<<40, 1<<40, 1, 64), "parameter count 1099511627776 exceeds"},
		{"truncated", good[:len(good)/2], "checksum mismatch"},
		{"not a state", []byte("hello, shim"), "not a lavit state"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := loadState(m, 40, tc.state)
			if !errors.Is(err, checkpoint.ErrCorrupt) || !strings.Contains(err.Error(), "checkpoint at step 40") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrCorrupt naming step 40 and %q", err, tc.want)
			}
			if got := m.Params(); !equalFloats(got, before) {
				t.Fatal("the refused state changed the model")
			}
		})
	}
	if err := loadState(m, 40, good); err != nil {
		t.Fatalf("the model's own state: %v", err)
	}
}

func equalFloats(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestShimRefusesCraftedBlockedHeaders: the shim's own loader (called
// directly, past the Go check) refuses a blocked header whose blocks ×
// block overflows int64, or whose block count the bytes cannot hold,
// before it forms the product or sizes anything from the count, and the
// model is left as it was. (It needs the shim built from this tree's
// trainer/csrc/shim.cpp: make torch.)
func TestShimRefusesCraftedBlockedHeaders(t *testing.T) {
	lib := shim(t)
	m := model(t, lib, trainer.TinyStage2())
	own, err := m.StatePart() // world 1: the whole blocked state
	if err != nil {
		t.Fatal(err)
	}
	P := binary.LittleEndian.Uint64(own[34:])
	before := append([]float32(nil), m.Params()...)
	cases := []struct {
		name  string
		state []byte
		want  string
	}{
		// 8 · (2^61 + P) wraps around to 8·P, which "covers" P.
		{"blocks × block overflows", hostileBlocked(P, 1<<61+P, 8, 64), "8 blocks of " + strconv.FormatUint(1<<61+P, 10) + " values overflow"},
		{"a block count past the bytes", hostileBlocked(P, P, 1<<24, 64), "state block count 16777216 exceeds what the 68 bytes left can hold"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := m.Load(tc.state)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if !equalFloats(m.Params(), before) {
				t.Fatal("the refused state changed the model")
			}
		})
	}
	if err := m.Load(own); err != nil {
		t.Fatalf("the model's own blocked state: %v", err)
	}
}
