package collective

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestAddFloat32 covers every split between the AVX2, SSE and Go loops,
// with and without AVX2 (where the CPU has it).
func TestAddFloat32(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	defer func(saved bool) { haveAVX2 = saved }(haveAVX2)
	for _, avx := range []bool{false, haveAVX2} {
		haveAVX2 = avx
		for n := range 130 {
			dst, src := make([]float32, n), make([]float32, n)
			want := make([]float32, n)
			for i := range n {
				dst[i], src[i] = rng.Float32(), rng.Float32()
				want[i] = dst[i] + src[i]
			}
			AddFloat32(dst, src)
			for i := range n {
				if dst[i] != want[i] {
					t.Fatalf("avx2=%v n=%d: dst[%d] = %v, want %v", avx, n, i, dst[i], want[i])
				}
			}
		}
	}
}

func TestAddFloat32LengthMismatchPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("AddFloat32 with different lengths did not panic")
		}
	}()
	AddFloat32(make([]float32, 3), make([]float32, 4))
}

func TestScaleFloat32(t *testing.T) {
	for n := range 20 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(i + 1)
		}
		ScaleFloat32(x, 0.5)
		for i := range x {
			if want := float32(i+1) * 0.5; x[i] != want {
				t.Fatalf("n=%d: x[%d] = %v, want %v", n, i, x[i], want)
			}
		}
	}
}

func BenchmarkAddFloat32(b *testing.B) {
	for _, n := range []int{64 << 10, 16 << 20} { // 256 KiB (cache), 64 MiB (memory)
		b.Run(fmt.Sprintf("floats=%d", n), func(b *testing.B) {
			dst, src := make([]float32, n), make([]float32, n)
			for i := range src {
				src[i] = 1e-9
			}
			b.SetBytes(int64(4 * n)) // bytes of dst updated
			for b.Loop() {
				AddFloat32(dst, src)
			}
		})
	}
}

func TestErrorNamesRankPeerAndKind(t *testing.T) {
	cause := errors.New("read: connection reset")
	e := &Error{Rank: 1, Peer: 2, Call: "allreduce", Kind: ErrPeerLost, Err: cause}
	for _, want := range []string{"rank 1", "allreduce", "peer rank 2", "peer lost", "connection reset"} {
		if !strings.Contains(e.Error(), want) {
			t.Errorf("%q lacks %q", e.Error(), want)
		}
	}
	if !errors.Is(e, ErrPeerLost) || !errors.Is(e, cause) || errors.Is(e, ErrAborted) {
		t.Errorf("errors.Is: got PeerLost=%v cause=%v Aborted=%v", errors.Is(e, ErrPeerLost), errors.Is(e, cause), errors.Is(e, ErrAborted))
	}
	d := &Error{Rank: 0, Peer: -1, Kind: context.DeadlineExceeded}
	if !errors.Is(d, context.DeadlineExceeded) || strings.Contains(d.Error(), "peer") {
		t.Errorf("deadline error %q", d)
	}
}

func TestWithDeadline(t *testing.T) {
	ctx, cancel := WithDeadline(context.Background(), 0)
	defer cancel()
	dl, ok := ctx.Deadline()
	if !ok || time.Until(dl) < DefaultTimeout-time.Minute {
		t.Fatalf("no default deadline: %v %v", dl, ok)
	}
	own, cancelOwn := context.WithTimeout(context.Background(), time.Second)
	defer cancelOwn()
	got, c2 := WithDeadline(own, time.Hour)
	defer c2()
	if got != own {
		t.Fatal("a ctx with a deadline was replaced")
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"4096", 4096, false},
		{"1KiB", 1024, false},
		{"64MiB", 64 << 20, false},
		{"2GiB", 2 << 30, false},
		{" 8 MiB ", 8 << 20, false},
		{"100B", 100, false},
		{"1MB", 0, true},
		{"-1", 0, true},
		{"1.5MiB", 0, true},
		{"MiB", 0, true},
		{"", 0, true},
		{"99999999999GiB", 0, true},
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestParseSizes(t *testing.T) {
	got, err := ParseSizes("1KiB..8KiB,64MiB")
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{1 << 10, 2 << 10, 4 << 10, 8 << 10, 64 << 20}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"", "8KiB..1KiB", "0..1KiB", "1KiB..x", "1KiB,,2KiB"} {
		if _, err := ParseSizes(bad); err == nil {
			t.Errorf("ParseSizes(%q): no error", bad)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for in, want := range map[int64]string{1024: "1KiB", 64 << 20: "64MiB", 1 << 30: "1GiB", 1000: "1000B", 1536: "1536B"} {
		if got := FormatSize(in); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestNewBenchRow(t *testing.T) {
	var times []time.Duration
	for i := 1; i <= 11; i++ {
		times = append(times, time.Duration(i)*time.Millisecond)
	}
	r := NewBenchRow("ring", "allreduce", 1e6, 4, times)
	if r.TimeMs != 6 || r.P10Ms != 2 || r.P90Ms != 10 {
		t.Fatalf("quantiles: %+v", r)
	}
	// 1e6 bytes in 6 ms = 0.1667 GB/s; busbw ×2·3/4.
	if d := r.AlgbwGBps - 1e6/6e-3/1e9; d > 1e-9 || d < -1e-9 {
		t.Errorf("algbw %v", r.AlgbwGBps)
	}
	if d := r.BusbwGBps - r.AlgbwGBps*1.5; d > 1e-9 || d < -1e-9 {
		t.Errorf("busbw %v", r.BusbwGBps)
	}
	if BusFactor(1) != 1 || BusFactor(2) != 1 {
		t.Errorf("bus factor 1: %v, 2: %v", BusFactor(1), BusFactor(2))
	}
}

func TestAwaitTurn(t *testing.T) {
	turn, broken := make(chan struct{}, 1), make(chan struct{})
	if held, failure := AwaitTurn(context.Background(), turn, broken, 3, "allreduce"); !held || failure != nil {
		t.Fatalf("free turn: held %v, failure %v", held, failure)
	}
	// The turn is taken: a ctx that ends first is a failure naming the call.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	held, failure := AwaitTurn(ctx, turn, broken, 3, "allreduce")
	if held || failure == nil || !errors.Is(failure, context.DeadlineExceeded) || failure.Rank != 3 || failure.Call != "allreduce" {
		t.Fatalf("taken turn, ctx ends: held %v, failure %v", held, failure)
	}
	// A communicator that breaks meanwhile: not held, no failure of its own.
	close(broken)
	if held, failure := AwaitTurn(context.Background(), turn, broken, 3, "allreduce"); held || failure != nil {
		t.Fatalf("broken: held %v, failure %v", held, failure)
	}
}

func TestCheckBlocks(t *testing.T) {
	for _, tc := range []struct {
		size, n int
		ok      bool
	}{
		{1, 0, true},
		{1, 7, true},
		{3, 0, true},
		{3, 6, true},
		{3, 7, false},
		{4, 2, false},
		{0, 4, false}, // no ranks: never a valid split
	} {
		err := CheckBlocks(1, tc.size, "reducescatter", tc.n)
		if tc.ok != (err == nil) {
			t.Errorf("CheckBlocks(size %d, n %d) = %v, want ok=%v", tc.size, tc.n, err, tc.ok)
			continue
		}
		if err == nil {
			continue
		}
		want := fmt.Sprintf("rank 1: reducescatter: collective aborted: invalid argument: buffer of %d elements is not a multiple of the world size %d (one equal block per rank)", tc.n, tc.size)
		if err.Error() != want || !errors.Is(err, ErrAborted) {
			t.Errorf("CheckBlocks(size %d, n %d) = %q, want %q wrapping ErrAborted", tc.size, tc.n, err, want)
		}
	}
}

// TestExactKernels: AddUint32 adds the words' bits modulo 2^32; MaxFloat32
// takes the maximum with NaN and +0 winning, so both give the same bits
// in either order.
func TestExactKernels(t *testing.T) {
	negZero := float32(math.Copysign(0, -1))
	nan := float32(math.NaN())
	bits := math.Float32frombits
	for _, tc := range []struct {
		name string
		add  func(dst, src []float32)
		a, b []float32
		want []uint32
	}{
		{"uint32 sum", AddUint32, []float32{bits(1), bits(0xffffffff), bits(0x80000000)}, []float32{bits(2), bits(2), bits(0x80000000)}, []uint32{3, 1, 0}},
		{"max", MaxFloat32, []float32{1, -1, negZero, nan, 2}, []float32{2, -3, 0, 5, nan}, []uint32{math.Float32bits(2), math.Float32bits(-1), 0, math.Float32bits(nan), math.Float32bits(nan)}},
	} {
		for _, order := range []string{"a+b", "b+a"} {
			dst, src := append([]float32(nil), tc.a...), tc.b
			if order == "b+a" {
				dst, src = append([]float32(nil), tc.b...), tc.a
			}
			tc.add(dst, src)
			for i, w := range tc.want {
				got := math.Float32bits(dst[i])
				if got != w && !(dst[i] != dst[i] && math.Float32frombits(w) != math.Float32frombits(w)) {
					t.Errorf("%s %s [%d] = %#x, want %#x", tc.name, order, i, got, w)
				}
			}
		}
	}
}
