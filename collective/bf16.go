package collective

import (
	"fmt"
	"math"
)

// A bfloat16 buffer travels through a Communicator packed in a []float32:
// two bfloat16 values per float32 word, little-endian, so element 2i is
// the low 16 bits of word i and element 2i+1 the high 16 bits (the bytes
// of the buffer are the bfloat16 array's bytes). The words are bit
// containers, never float32 values: compare them with math.Float32bits.

// BF16FromFloat32 rounds f to the nearest bfloat16, ties to even. A value
// past the largest bfloat16 becomes ±Inf; a NaN stays a NaN (sign and top
// payload bits kept, the quiet bit set); subnormals round like any value.
func BF16FromFloat32(f float32) uint16 {
	return bf16Round(math.Float32bits(f))
}

// Float32FromBF16 is the float32 of bfloat16 h (exact: every bfloat16 is
// a float32).
func Float32FromBF16(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// bf16Round rounds the float32 bits b to bfloat16, to nearest even: add
// just under half of the dropped low 16 bits' range, plus one when the
// kept part is odd, and truncate. A carry into the exponent is the right
// answer (up to the next power of two, or to Inf past the largest finite).
func bf16Round(b uint32) uint16 {
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x0040 // NaN: keep it a (quiet) NaN
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// AddBF16 sets dst += src element-wise for packed bfloat16 buffers (two
// per word, see SumBF16): each sum is done in float32 and rounded to
// bfloat16 (nearest even), as NCCL sums ncclBfloat16. It panics if the
// lengths differ.
func AddBF16(dst, src []float32) {
	if len(dst) != len(src) {
		panic(fmt.Sprintf("collective.AddBF16: len(dst) %d != len(src) %d", len(dst), len(src)))
	}
	src = src[:len(dst)] // one bounds check for the loop
	for i, w := range dst {
		d, s := math.Float32bits(w), math.Float32bits(src[i])
		lo := math.Float32frombits(d<<16) + math.Float32frombits(s<<16)
		hi := math.Float32frombits(d&0xffff0000) + math.Float32frombits(s&0xffff0000)
		sum := uint32(bf16Round(math.Float32bits(lo))) | uint32(bf16Round(math.Float32bits(hi)))<<16
		dst[i] = math.Float32frombits(sum)
	}
}
