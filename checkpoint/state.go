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
		sizes[b] = 4 + 8 + 12*blockValues(P, block, int64(b)) + 4
	}
	sizes[0] += blockedHeaderFixed + 4*codebook
	return sizes
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// parseBlocked reads a blocked state into whole tensors (params, exp_avg,
// exp_avg_sq, and for stage 1 the codebook), verifying every checksum.
// Every size in the header is checked against the bytes there are before
// anything is allocated from it. Without keep it only checks: the
// returned StateInfo has no values.
func parseBlocked(b []byte, keep bool) (*StateInfo, error) {
	r := reader{b: b, off: 12}
	st := &StateInfo{Values: map[string][]float32{}}
	st.Stage = int(r.u32())
	st.AdamT, st.Step = r.u64(), r.u64()
	st.VQOn, st.Frozen = r.u8() != 0, r.u8() != 0
	P, block, blocks := int64(r.u64()), int64(r.u64()), int64(r.u32())
	cb := int64(r.u64())
	if r.err != nil {
		return nil, fmt.Errorf("blocked state header: %w", r.err)
	}
	if err := checkBlockedHeader(P, block, blocks, cb, int64(r.left())); err != nil {
		return nil, fmt.Errorf("blocked state header: %w", err)
	}
	codebook := r.bytes(int(4 * cb))
	header := b[:r.off]
	if want := r.u32(); r.err != nil {
		return nil, fmt.Errorf("blocked state header: %w", r.err)
	} else if crc32.Checksum(header, castagnoli) != want {
		return nil, errors.New("state header checksum mismatch")
	}
	names := []string{"params", "exp_avg", "exp_avg_sq"}
	if keep {
		for _, name := range names {
			st.Values[name] = make([]float32, 0, P)
		}
	}
	for i := range blocks {
		at := r.off
		idx, n := int64(r.u32()), int64(r.u64())
		if r.err == nil && (idx != i || n != blockValues(P, block, i)) {
			return nil, fmt.Errorf("blocked state: block %d is out of place or has a wrong length (index %d, %d values)", i, idx, n)
		}
		// n ≤ P, and 12·P fits the state: no overflow.
		raw := r.bytes(int(12 * n))
		if r.err != nil {
			return nil, fmt.Errorf("blocked state: block %d: %w", i, r.err)
		}
		sealed := b[at:r.off]
		if want := r.u32(); r.err != nil {
			return nil, fmt.Errorf("blocked state: block %d: %w", i, r.err)
		} else if crc32.Checksum(sealed, castagnoli) != want {
			return nil, fmt.Errorf("state block %d checksum mismatch", i)
		}
		if keep {
			for k, name := range names {
				st.Values[name] = append(st.Values[name], floats(raw[4*n*int64(k):4*n*int64(k+1)])...)
			}
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("blocked state: %w", r.err)
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("blocked state has %d trailing bytes", len(b)-r.off)
	}
	st.Tensors = names
	if st.Stage == 1 {
		st.Tensors = append(st.Tensors, "codebook")
		if keep {
			st.Values["codebook"] = floats(codebook)
		}
	}
	return st, nil
}

// checkBlockedHeader checks a blocked state's sizes (P parameters in
// blocks of block values, a codebook of cb values) against the left bytes
// that follow them: every block takes 16 bytes and 12 per value, the
// codebook 4 per value.
func checkBlockedHeader(P, block, blocks, cb, left int64) error {
	switch {
	case P < 0:
		return fmt.Errorf("parameter count %d is negative", P)
	case block < 1:
		return fmt.Errorf("block size %d is not positive", block)
	case blocks < 1:
		return fmt.Errorf("block count %d is not positive", blocks)
	case cb < 0:
		return fmt.Errorf("codebook numel %d is negative", cb)
	case blocks > left/16:
		return fmt.Errorf("block count %d exceeds what the %d bytes left can hold", blocks, left)
	case block > math.MaxInt64/blocks:
		return fmt.Errorf("%d blocks of %d values overflow", blocks, block)
	case block*blocks < P:
		return fmt.Errorf("%d blocks of %d do not hold %d parameters", blocks, block, P)
	case P > left/12:
		return fmt.Errorf("parameter count %d exceeds what the %d bytes left can hold", P, left)
	case cb > left/4:
		return fmt.Errorf("codebook numel %d exceeds what the %d bytes left can hold", cb, left)
	}
	return nil
}

// blockValues is n_b = clamp(P − b·block, 0, block), the values block b
// holds (b·block does not overflow once checkBlockedHeader passed).
func blockValues(P, block, b int64) int64 {
	return min(max(P-b*block, 0), block)
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
// The blob is untrusted: every count and size in it is checked against
// the bytes that follow before anything is allocated from it, so a
// damaged or hostile state is an error, never a panic or a huge
// allocation.
func ParseState(b []byte, format uint32) (*StateInfo, error) {
	return parseState(b, format, true)
}

// CheckState checks a state blob as ParseState does (every size, name
// and checksum, either layout) without copying its values: the worker
// runs it on a fetched state before the shim's loader sees a byte, at no
// memory cost beyond the blob.
func CheckState(b []byte, format uint32) error {
	_, err := parseState(b, format, false)
	return err
}

// parseState is ParseState; without keep it only checks, and the
// StateInfo it returns has the header and tensor names, no values.
func parseState(b []byte, format uint32, keep bool) (*StateInfo, error) {
	if len(b) < 12 || string(b[:8]) != "LAVITST1" {
		return nil, errors.New("not a lavit state")
	}
	if binary.LittleEndian.Uint32(b[8:12]) == StateFormatBlocked {
		return parseBlocked(b, keep)
	}
	if len(b) < 16 {
		return nil, errors.New("state is truncated")
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
	n := int64(r.u32())
	if r.err != nil {
		return nil, fmt.Errorf("state header: %w", r.err)
	}
	// A tensor takes at least 12 bytes (name length and numel).
	if n > int64(r.left())/12 {
		return nil, fmt.Errorf("state tensor count %d exceeds what the %d bytes left can hold", n, r.left())
	}
	for i := range n {
		name, err := r.tensorName()
		if err != nil {
			return nil, fmt.Errorf("state tensor %d: %w", i, err)
		}
		if _, dup := st.Values[name]; dup {
			return nil, fmt.Errorf("state tensor %q appears twice", name)
		}
		numel := int64(r.u64())
		switch {
		case r.err != nil:
			return nil, fmt.Errorf("state tensor %q: %w", name, r.err)
		case numel < 0:
			return nil, fmt.Errorf("state tensor %q: numel %d is negative", name, numel)
		case numel > int64(r.left())/4:
			return nil, fmt.Errorf("state tensor %q: numel %d exceeds what the %d bytes left can hold", name, numel, r.left())
		}
		st.Tensors = append(st.Tensors, name)
		raw := r.bytes(int(4 * numel))
		if keep {
			st.Values[name] = floats(raw)
		} else {
			st.Values[name] = nil // seen: a duplicate is refused
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(body) {
		return nil, fmt.Errorf("state has %d trailing bytes", len(body)-r.off)
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

// reader reads little-endian values from b. Reading past the end sets err
// (and returns zeros); it never allocates.
type reader struct {
	b   []byte
	off int
	err error
}

// left is how many bytes are not read yet.
func (r *reader) left() int { return len(r.b) - r.off }

// bytes returns the next n bytes, or nil (with err set) when fewer are left.
func (r *reader) bytes(n int) []byte {
	if r.err != nil || n < 0 || n > r.left() {
		if r.err == nil {
			r.err = errors.New("state is truncated")
		}
		return nil
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out
}

func (r *reader) u8() uint8 {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if b := r.bytes(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// maxTensorName bounds a state tensor's name (the shim's names are short).
const maxTensorName = 256

// tensorName reads a u32 length and that many bytes of name.
func (r *reader) tensorName() (string, error) {
	n := r.u32()
	switch {
	case r.err != nil:
		return "", r.err
	case n > maxTensorName:
		return "", fmt.Errorf("name length %d exceeds the limit of %d", n, maxTensorName)
	case int64(n) > int64(r.left()):
		return "", fmt.Errorf("name length %d exceeds the %d bytes left", n, r.left())
	}
	return string(r.bytes(int(n))), nil
}
