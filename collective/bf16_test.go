package collective

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// isQuietNaNBF16 reports whether h is a bfloat16 NaN with the quiet bit set.
func isQuietNaNBF16(h uint16) bool { return h&0x7f80 == 0x7f80 && h&0x0040 != 0 }

// TestBF16FromFloat32: hand-checked roundings, ties to even, overflow to
// Inf, NaNs (a payload only in the dropped bits must not become Inf),
// signed zeros and subnormals.
func TestBF16FromFloat32(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   uint32 // float32 bits
		want uint16
	}{
		{"one", 0x3f800000, 0x3f80},
		{"exact -2", 0xc0000000, 0xc000},
		{"below the tie rounds down", 0x3f807fff, 0x3f80},
		{"tie, even kept part, rounds down", 0x3f808000, 0x3f80},
		{"above the tie rounds up", 0x3f808001, 0x3f81},
		{"tie, odd kept part, rounds up", 0x3f818000, 0x3f82},
		{"negative tie, odd, away from zero", 0xbf818000, 0xbf82},
		{"1/3", 0x3eaaaaab, 0x3eab},
		{"carry into the exponent", 0x3fffffff, 0x4000},
		{"largest bf16", 0x7f7f0000, 0x7f7f},
		{"just below the tie at the top stays finite", 0x7f7f7fff, 0x7f7f},
		{"tie at the top overflows to Inf", 0x7f7f8000, 0x7f80},
		{"largest float32 overflows to Inf", 0x7f7fffff, 0x7f80},
		{"-largest float32 overflows to -Inf", 0xff7fffff, 0xff80},
		{"+Inf", 0x7f800000, 0x7f80},
		{"-Inf", 0xff800000, 0xff80},
		{"+0", 0x00000000, 0x0000},
		{"-0", 0x80000000, 0x8000},
		{"quiet NaN", 0x7fc00000, 0x7fc0},
		{"negative quiet NaN", 0xffc00000, 0xffc0},
		{"signalling NaN is quietened, payload kept", 0x7fa00000, 0x7fe0},
		{"NaN payload only in the low bits stays NaN", 0x7f800001, 0x7fc0},
		{"smallest bf16 subnormal", 0x00010000, 0x0001},
		{"subnormal tie to even zero", 0x00008000, 0x0000},
		{"subnormal above the tie", 0x00008001, 0x0001},
		{"subnormal tie, odd, up", 0x00018000, 0x0002},
		{"negative subnormal tie to -0", 0x80008000, 0x8000},
		{"largest subnormal rounds to the smallest normal", 0x807fffff, 0x8080},
	} {
		got := BF16FromFloat32(math.Float32frombits(tc.in))
		if got != tc.want {
			t.Errorf("%s: BF16FromFloat32(%#08x) = %#04x, want %#04x", tc.name, tc.in, got, tc.want)
		}
	}
}

// TestFloat32FromBF16: hand-checked values, and every bfloat16 round-trips
// (a NaN comes back quietened).
func TestFloat32FromBF16(t *testing.T) {
	for _, tc := range []struct {
		in   uint16
		want uint32
	}{
		{0x3f80, 0x3f800000}, // 1
		{0xc000, 0xc0000000}, // -2
		{0x8000, 0x80000000}, // -0
		{0x7f80, 0x7f800000}, // +Inf
		{0x0001, 0x00010000}, // 2^-133, subnormal
		{0x7fc1, 0x7fc10000}, // NaN, payload kept
	} {
		if got := math.Float32bits(Float32FromBF16(tc.in)); got != tc.want {
			t.Errorf("Float32FromBF16(%#04x) = %#08x, want %#08x", tc.in, got, tc.want)
		}
	}
	for h := range 1 << 16 {
		in := uint16(h)
		want := in
		if in&0x7f80 == 0x7f80 && in&0x7f != 0 {
			want = in | 0x0040
		}
		if got := BF16FromFloat32(Float32FromBF16(in)); got != want {
			t.Fatalf("round trip of %#04x = %#04x, want %#04x", in, got, want)
		}
	}
}

// packBF16 packs bfloat16 elements two to a word, element 2i in the low
// half of word i (an odd count leaves a zero high half).
func packBF16(e []uint16) []float32 {
	w := make([]float32, (len(e)+1)/2)
	for i, h := range e {
		b := math.Float32bits(w[i/2]) | uint32(h)<<(16*(i%2))
		w[i/2] = math.Float32frombits(b)
	}
	return w
}

// unpackBF16 is packBF16's inverse.
func unpackBF16(w []float32) []uint16 {
	e := make([]uint16, 2*len(w))
	for i := range e {
		e[i] = uint16(math.Float32bits(w[i/2]) >> (16 * (i % 2)))
	}
	return e
}

// addRow is one hand-checked bfloat16 sum.
type addRow struct {
	name      string
	a, b, sum uint16
}

// TestAddBF16: hand-checked sums, each rounded to bfloat16 after the
// float32 add, in both halves of a word.
func TestAddBF16(t *testing.T) {
	const nan = 0xffff // want: any quiet NaN (Inf − Inf's sign is the CPU's)
	rows := []addRow{
		{"1 + 1", 0x3f80, 0x3f80, 0x4000},
		{"1 + 2^-8: a tie, rounds to even 1", 0x3f80, 0x3b80, 0x3f80},
		{"1.0078125 + 2^-8: a tie, rounds up to even", 0x3f81, 0x3b80, 0x3f82},
		{"1 + 3·2^-9: above the tie", 0x3f80, 0x3bc0, 0x3f81},
		{"1 + -1 is +0", 0x3f80, 0xbf80, 0x0000},
		{"-0 + -0 is -0", 0x8000, 0x8000, 0x8000},
		{"-0 + +0 is +0", 0x8000, 0x0000, 0x0000},
		{"largest + 2^119: a tie at the top, overflows to Inf", 0x7f7f, 0x7b00, 0x7f80},
		{"largest + largest overflows to Inf", 0x7f7f, 0x7f7f, 0x7f80},
		{"-largest + -largest overflows to -Inf", 0xff7f, 0xff7f, 0xff80},
		{"Inf + 1", 0x7f80, 0x3f80, 0x7f80},
		{"NaN + 1", 0x7fc0, 0x3f80, 0x7fc0},
		{"1 + NaN", 0x3f80, 0xffc1, 0xffc1},
		{"signalling NaN + 1 is quiet", 0x7f81, 0x3f80, 0x7fc1},
		{"Inf + -Inf", 0x7f80, 0xff80, nan},
		{"subnormal + subnormal", 0x0001, 0x0001, 0x0002},
		{"subnormals add up to the smallest normal", 0x0040, 0x0040, 0x0080},
		{"negative subnormal + positive", 0x807f, 0x0001, 0x807e},
		{"2 + 2^-8 is lost (under half an ulp)", 0x4000, 0x3b80, 0x4000},
	}
	// Element 2i is the low half of word i: pair row i with row i+1 in
	// one word both ways round, so every row is checked in both halves.
	for i := range rows {
		j := (i + 1) % len(rows)
		for _, order := range [][2]int{{i, j}, {j, i}} {
			lo, hi := rows[order[0]], rows[order[1]]
			dst := packBF16([]uint16{lo.a, hi.a})
			src := packBF16([]uint16{lo.b, hi.b})
			AddBF16(dst, src)
			got := unpackBF16(dst)
			for half, row := range []addRow{lo, hi} {
				ok := got[half] == row.sum
				if row.sum == nan {
					ok = isQuietNaNBF16(got[half])
				}
				if !ok {
					t.Errorf("%s (%s half): %#04x + %#04x = %#04x, want %#04x", row.name, []string{"low", "high"}[half], row.a, row.b, got[half], row.sum)
				}
			}
		}
	}
	// The packing itself: elements 1 and 2 are the word 0x40003f80.
	if w := math.Float32bits(packBF16([]uint16{0x3f80, 0x4000})[0]); w != 0x40003f80 {
		t.Fatalf("packed word %#08x, want 0x40003f80", w)
	}
}

// TestAddBF16MatchesScalar: every length up to 13 words (the unrolled
// loop and its tail) against the scalar definition, on random finite
// bfloat16s of mixed magnitudes.
func TestAddBF16MatchesScalar(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	random := func() uint16 {
		return BF16FromFloat32((rng.Float32()*2 - 1) * float32(math.Ldexp(1, rng.IntN(40)-20)))
	}
	for n := range 14 {
		a, b := make([]uint16, 2*n), make([]uint16, 2*n)
		for i := range a {
			a[i], b[i] = random(), random()
		}
		dst, src := packBF16(a), packBF16(b)
		AddBF16(dst, src)
		for i, got := range unpackBF16(dst) {
			want := BF16FromFloat32(Float32FromBF16(a[i]) + Float32FromBF16(b[i]))
			if got != want {
				t.Fatalf("n=%d: element %d: %#04x + %#04x = %#04x, want %#04x", n, i, a[i], b[i], got, want)
			}
		}
		if got := unpackBF16(src); fmt.Sprint(got) != fmt.Sprint(b) {
			t.Fatalf("n=%d: AddBF16 changed src", n)
		}
	}
}

func TestAddBF16LengthMismatchPanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "AddBF16") {
			t.Fatalf("AddBF16 with different lengths: recovered %v, want a panic naming AddBF16", r)
		}
	}()
	AddBF16(make([]float32, 3), make([]float32, 4))
}

// TestOps: names and validity of every op, and the error an unknown one
// breaks a communicator with.
func TestOps(t *testing.T) {
	for _, tc := range []struct {
		op    Op
		name  string
		valid bool
	}{
		{Sum, "sum", true},
		{Avg, "avg", true},
		{SumBF16, "sum-bf16", true},
		{SumUint32, "sum-uint32", true},
		{Max, "max", true},
		{Op(5), "Op(5)", false},
		{Op(-1), "Op(-1)", false},
	} {
		if tc.op.String() != tc.name || tc.op.Valid() != tc.valid {
			t.Errorf("op %d: %q valid %v, want %q valid %v", int(tc.op), tc.op, tc.op.Valid(), tc.name, tc.valid)
		}
		err := CheckOp(1, "allreduce", tc.op)
		if tc.valid != (err == nil) {
			t.Errorf("CheckOp(%v) = %v", tc.op, err)
		}
		if err != nil && !strings.Contains(err.Error(), "invalid argument: unknown op "+tc.name) {
			t.Errorf("CheckOp(%v) = %q, want it to name the op", tc.op, err)
		}
	}
}

func BenchmarkAddBF16(b *testing.B) {
	for _, n := range []int{64 << 10, 16 << 20} { // 256 KiB (cache), 64 MiB (memory)
		b.Run(fmt.Sprintf("words=%d", n), func(b *testing.B) {
			dst, src := make([]float32, n), make([]float32, n)
			one := packBF16([]uint16{0x3f80, 0x3b80})[0]
			for i := range src {
				src[i] = one
			}
			b.SetBytes(int64(4 * n)) // bytes of dst updated
			for b.Loop() {
				AddBF16(dst, src)
			}
		})
	}
}
