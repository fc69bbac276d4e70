package cliutil

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are the byte-size suffixes ParseSize takes, case-insensitive:
// SI (powers of 1000) and IEC (powers of 1024).
var sizeUnits = []struct {
	suffix string
	bytes  float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"b", 1},
}

// ParseSize reads a byte size: plain bytes ("85899345920") or a number
// with a unit, "80GiB", "80 GB", "81920MiB", "1.5TiB" (KB, MB, GB, TB are
// powers of 1000; KiB, MiB, GiB, TiB of 1024; B is bytes). It must be
// positive.
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.bytes
			break
		}
	}
	digits := strings.TrimPrefix(t, "-")
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || digits == "" || strings.Trim(digits, "0123456789.") != "" {
		return 0, fmt.Errorf("size %q: want bytes or a number with a unit, e.g. 80GiB, 80GB, 81920MiB", s)
	}
	n := v * mult
	if !(n >= 1) || n > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q: must be at least one byte (and below 4 EiB)", s)
	}
	return int64(math.Round(n)), nil
}
