package worker

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Pinning worker processes to cores (lavit-worker join --cpus): two workers
// sharing a 2-core host each ran their step's compute in 19–22 ms pinned
// against 24–29 ms unpinned (BenchmarkVsDDP, tiny stage 1): the kernel
// otherwise moves the compute threads between cores and each core's cache
// refills. --device all gives each child its own share of the cores.

// ParseCPUList parses a CPU list in the kernel's format ("0-3,6,8-9") into
// sorted, distinct CPU numbers.
func ParseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("empty CPU list")
	}
	seen := map[int]bool{}
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil || first < 0 {
			return nil, fmt.Errorf("CPU list %q: %q is not a CPU number or range (like 0-3,6)", s, part)
		}
		last := first
		if isRange {
			if last, err = strconv.Atoi(hi); err != nil || last < first {
				return nil, fmt.Errorf("CPU list %q: %q is not a range from low to high (like 0-3)", s, part)
			}
		}
		for c := first; c <= last; c++ {
			if !seen[c] {
				seen[c] = true
				cpus = append(cpus, c)
			}
		}
	}
	slices.Sort(cpus)
	return cpus, nil
}

// FormatCPUList is ParseCPUList's inverse: sorted CPUs as ranges.
func FormatCPUList(cpus []int) string {
	var parts []string
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(cpus[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", cpus[i], cpus[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// CPUShare is worker i's share of cpus when `workers` processes split
// them: contiguous and disjoint, the first len(cpus)%workers one CPU
// larger. With fewer CPUs than workers, worker i gets CPU i mod len(cpus).
func CPUShare(cpus []int, workers, i int) []int {
	if len(cpus) == 0 || workers < 1 {
		return nil
	}
	if len(cpus) < workers {
		return []int{cpus[i%len(cpus)]}
	}
	each, extra := len(cpus)/workers, len(cpus)%workers
	lo := i*each + min(i, extra)
	n := each
	if i < extra {
		n++
	}
	return append([]int(nil), cpus[lo:lo+n]...)
}
