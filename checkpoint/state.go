package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// The trainer's state blob (written by the libtorch shim, little-endian):
//
//	"LAVITST1" | u32 format | u32 stage | u64 adam_t | u64 step | u8 vq_on | u8 selector_frozen
//	| u32 tensor count | per tensor: u32 name length, name, u64 numel, float32 × numel
//	| u32 FNV-1a checksum of everything before it
//
// Every data-parallel replica holds the same bytes, so a checkpoint stores
// the blob as W contiguous parts (one per rank) and restores it at any
// world size by concatenating them.

// StateFormat is the state layout version lavit-coord reads without
// linking the trainer; a trainer test keeps it equal to the shim's
// (trainer.StateFormat, LAVIT_STATE_FORMAT). It is not the shim's ABI
// version: the ABI can grow without changing the states.
const StateFormat = 1

// StateInfo is a parsed state.
type StateInfo struct {
	Stage        int
	AdamT, Step  uint64
	VQOn, Frozen bool
	Tensors      []string
	Values       map[string][]float32
}

// ParseState decodes and verifies a state blob of layout version format.
func ParseState(b []byte, format uint32) (*StateInfo, error) {
	if len(b) < 12 || string(b[:8]) != "LAVITST1" {
		return nil, errors.New("not a lavit state")
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if fnv1a(body) != sum {
		return nil, errors.New("state checksum mismatch")
	}
	r := reader{b: body, off: 8}
	st := &StateInfo{Values: map[string][]float32{}}
	if got := r.u32(); got != format {
		return nil, fmt.Errorf("state format %d, want %d", got, format)
	}
	st.Stage = int(r.u32())
	st.AdamT, st.Step = r.u64(), r.u64()
	st.VQOn, st.Frozen = r.u8() != 0, r.u8() != 0
	n := int(r.u32())
	for i := 0; i < n && r.err == nil; i++ {
		name := string(r.bytes(int(r.u32())))
		numel := int(r.u64())
		raw := r.bytes(numel * 4)
		vals := make([]float32, numel)
		for k := range vals {
			vals[k] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*k:]))
		}
		st.Tensors = append(st.Tensors, name)
		st.Values[name] = vals
	}
	if r.err != nil {
		return nil, r.err
	}
	return st, nil
}

func fnv1a(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || n < 0 || r.off+n > len(r.b) {
		if r.err == nil {
			r.err = errors.New("state is truncated")
		}
		return make([]byte, max(n, 0))
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out
}

func (r *reader) u8() uint8   { return r.bytes(1)[0] }
func (r *reader) u32() uint32 { return binary.LittleEndian.Uint32(r.bytes(4)) }
func (r *reader) u64() uint64 { return binary.LittleEndian.Uint64(r.bytes(8)) }
