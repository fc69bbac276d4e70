package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
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

// StateFormatBlocked is the layout of a state written shard by shard
// (the trainer's Model.StatePart, LAVIT_STATE_FORMAT_BLOCKED): a header
// part, then one part per block of the flat buffers, each written by the
// rank that holds that block and each with its own CRC-32C, so no rank
// needs another's bytes:
//
//	header: "LAVITST1" | u32 format 2 | u32 stage | u64 adam_t | u64 step
//	        | u8 vq_on | u8 selector_frozen | u64 P | u64 block | u32 blocks
//	        | u64 codebook numel | float32 codebook | u32 CRC-32C of the header
//	block b: u32 b | u64 n_b | float32 params[n_b] | exp_avg[n_b] | exp_avg_sq[n_b]
//	        | u32 CRC-32C of the block
//
// with n_b = clamp(P − b·block, 0, block). A checkpoint's part r is block
// r, with the header in front of part 0 (BlockedLayout).
const StateFormatBlocked = 2

// blockedHeaderFixed is the header's size without the codebook.
const blockedHeaderFixed = 8 + 4 + 4 + 8 + 8 + 1 + 1 + 8 + 8 + 4 + 8 + 4

// BlockedLayout is the size in bytes of each of the blocks parts of a
// blocked state of P parameters cut into blocks of `block` values, with a
// codebook of codebook values (0 for stage 2): what each rank writes.
func BlockedLayout(P, block int64, blocks int, codebook int64) []int64 {
	sizes := make([]int64, blocks)
	for b := range sizes {
		n := min(max(P-int64(b)*block, 0), block)
		sizes[b] = 4 + 8 + 12*n + 4
	}
	sizes[0] += blockedHeaderFixed + 4*codebook
	return sizes
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// parseBlocked reads a blocked state into whole tensors (params, exp_avg,
// exp_avg_sq, and for stage 1 the codebook), verifying every checksum.
func parseBlocked(b []byte) (*StateInfo, error) {
	r := reader{b: b, off: 12}
	st := &StateInfo{Values: map[string][]float32{}}
	st.Stage = int(r.u32())
	st.AdamT, st.Step = r.u64(), r.u64()
	st.VQOn, st.Frozen = r.u8() != 0, r.u8() != 0
	P, block, blocks := int64(r.u64()), int64(r.u64()), int(r.u32())
	cb := int64(r.u64())
	if r.err != nil {
		return nil, r.err
	}
	if blocks < 1 || block < 1 || P < 0 || block*int64(blocks) < P || P > int64(len(b)) || cb > int64(len(b)) {
		return nil, fmt.Errorf("blocked state: %d blocks of %d do not hold %d parameters", blocks, block, P)
	}
	codebook := floats(r.bytes(int(4 * cb)))
	if sum := crc32.Checksum(b[:r.off], castagnoli); sum != r.u32() {
		return nil, errors.New("state header checksum mismatch")
	}
	names := []string{"params", "exp_avg", "exp_avg_sq"}
	for _, name := range names {
		st.Values[name] = make([]float32, 0, P)
	}
	for i := range blocks {
		at := r.off
		idx, n := int(r.u32()), int64(r.u64())
		if r.err == nil && (idx != i || n != min(max(P-int64(i)*block, 0), block)) {
			return nil, fmt.Errorf("blocked state: block %d is out of place or has a wrong length", i)
		}
		raw := r.bytes(int(12 * n))
		if r.err != nil {
			return nil, r.err
		}
		if sum := crc32.Checksum(b[at:r.off], castagnoli); sum != r.u32() {
			return nil, fmt.Errorf("state block %d checksum mismatch", i)
		}
		for k, name := range names {
			st.Values[name] = append(st.Values[name], floats(raw[4*n*int64(k):4*n*int64(k+1)])...)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(b) {
		return nil, errors.New("blocked state has trailing bytes")
	}
	st.Tensors = names
	if st.Stage == 1 {
		st.Tensors = append(st.Tensors, "codebook")
		st.Values["codebook"] = codebook
	}
	return st, nil
}

// floats reads little-endian float32s.
func floats(raw []byte) []float32 {
	vals := make([]float32, len(raw)/4)
	for k := range vals {
		vals[k] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*k:]))
	}
	return vals
}

// StateInfo is a parsed state.
type StateInfo struct {
	Stage        int
	AdamT, Step  uint64
	VQOn, Frozen bool
	Tensors      []string
	Values       map[string][]float32
}

// ParseState decodes and verifies a state blob of layout version format.
// A blocked state (StateFormatBlocked) is read too, whatever format says.
func ParseState(b []byte, format uint32) (*StateInfo, error) {
	if len(b) < 12 || string(b[:8]) != "LAVITST1" {
		return nil, errors.New("not a lavit state")
	}
	if binary.LittleEndian.Uint32(b[8:12]) == StateFormatBlocked {
		return parseBlocked(b)
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
