package collective

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// BenchRow is one all-reduce benchmark result, in nccl-tests' terms:
// algbw = bytes / time, busbw = algbw · 2(n−1)/n, GB = 1e9 bytes.
type BenchRow struct {
	SizeBytes int64   `json:"size_bytes"`
	World     int     `json:"world"`
	Op        string  `json:"op"`      // "allreduce" or "transfer_only"
	TimeMs    float64 `json:"time_ms"` // median
	P10Ms     float64 `json:"p10_ms"`
	P90Ms     float64 `json:"p90_ms"`
	AlgbwGBps float64 `json:"algbw_GBps"`
	BusbwGBps float64 `json:"busbw_GBps"`
	Backend   string  `json:"backend"`
	Iters     int     `json:"iters"`
	// OfLimit is the share of the transfer-only limit measured in the
	// same run, interleaved: the median over iterations of transfer-only
	// time / all-reduce time (0 when not measured).
	OfLimit float64 `json:"of_limit,omitempty"`
}

// NewBenchRow summarises per-iteration times.
func NewBenchRow(backend, op string, sizeBytes int64, world int, times []time.Duration) BenchRow {
	r := BenchRow{SizeBytes: sizeBytes, World: world, Op: op, Backend: backend, Iters: len(times)}
	if len(times) == 0 {
		return r
	}
	ts := slices.Clone(times)
	slices.Sort(ts)
	q := func(p float64) float64 {
		i := int(math.Round(p * float64(len(ts)-1)))
		return float64(ts[i]) / float64(time.Millisecond)
	}
	r.TimeMs, r.P10Ms, r.P90Ms = q(0.5), q(0.1), q(0.9)
	if r.TimeMs > 0 {
		r.AlgbwGBps = float64(sizeBytes) / (r.TimeMs / 1e3) / 1e9
		r.BusbwGBps = r.AlgbwGBps * BusFactor(world)
	}
	return r
}

// BusFactor is nccl-tests' all-reduce bus-bandwidth factor 2(n−1)/n
// (1 for n = 1, where nothing moves).
func BusFactor(world int) float64 {
	if world <= 1 {
		return 1
	}
	return 2 * float64(world-1) / float64(world)
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// ParseSize parses a byte count: plain digits, or digits with a B, KiB,
// MiB or GiB suffix ("4096", "64MiB").
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q: want bytes, optionally with a KiB, MiB or GiB suffix", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("bad size %q: too large", s)
	}
	return n * mult, nil
}

// ParseSizes parses a comma-separated list of sizes, where an item
// "LO..HI" stands for LO, 2·LO, 4·LO, … up to HI.
func ParseSizes(s string) ([]int64, error) {
	var out []int64
	for item := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(item, "..")
		a, err := ParseSize(lo)
		if err != nil {
			return nil, err
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := ParseSize(hi)
		if err != nil {
			return nil, err
		}
		if a <= 0 || b < a {
			return nil, fmt.Errorf("bad size range %q: want 0 < LO ≤ HI", item)
		}
		for v := a; v <= b; v *= 2 {
			out = append(out, v)
			if v > math.MaxInt64/2 {
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no sizes in %q", s)
	}
	return out, nil
}

// FormatSize renders n bytes with the largest binary unit that divides it.
func FormatSize(n int64) string {
	for _, u := range sizeUnits[:3] {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
