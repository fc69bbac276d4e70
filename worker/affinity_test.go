package worker

import (
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		err  string
	}{
		{in: "0", want: []int{0}},
		{in: "0-3", want: []int{0, 1, 2, 3}},
		{in: " 6, 0-1 ,1-2", want: []int{0, 1, 2, 6}},
		{in: "", err: "empty"},
		{in: "a", err: `"a" is not a CPU number`},
		{in: "-1", err: "not a CPU number"},
		{in: "3-1", err: "not a range from low to high"},
		{in: "1-x", err: "not a range"},
		{in: "0,,1", err: `"" is not a CPU number`},
	}
	for _, tt := range tests {
		got, err := ParseCPUList(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseCPUList(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if back, _ := ParseCPUList(FormatCPUList(got)); !reflect.DeepEqual(back, got) {
			t.Errorf("FormatCPUList(%v) = %q does not parse back", got, FormatCPUList(got))
		}
	}
	if got := FormatCPUList([]int{0, 1, 2, 5, 7, 8}); got != "0-2,5,7-8" {
		t.Errorf("FormatCPUList = %q, want 0-2,5,7-8", got)
	}
}

func TestCPUShare(t *testing.T) {
	cpus := []int{0, 1, 2, 3, 4, 5, 6}
	tests := []struct {
		cpus       []int
		workers, i int
		want       []int
	}{
		{cpus, 1, 0, cpus},
		{cpus, 2, 0, []int{0, 1, 2, 3}},
		{cpus, 2, 1, []int{4, 5, 6}},
		{cpus, 3, 2, []int{5, 6}},
		{[]int{0, 1}, 4, 3, []int{1}},
		{nil, 2, 0, nil},
	}
	for _, tt := range tests {
		if got := CPUShare(tt.cpus, tt.workers, tt.i); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("CPUShare(%v, %d, %d) = %v, want %v", tt.cpus, tt.workers, tt.i, got, tt.want)
		}
	}
	// The shares cover every CPU once.
	for w := 1; w <= len(cpus); w++ {
		var all []int
		for i := range w {
			all = append(all, CPUShare(cpus, w, i)...)
		}
		if !reflect.DeepEqual(all, cpus) {
			t.Errorf("%d workers: shares %v, want %v once each", w, all, cpus)
		}
	}
}

// TestPinProcess pins this test process to one allowed CPU and reads the
// affinity back, refuses CPUs it cannot have, then restores the affinity.
func TestPinProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("pinning is Linux only")
	}
	allowed, err := AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	defer PinProcess(allowed)
	last := allowed[len(allowed)-1]
	if err := PinProcess([]int{last}); err != nil {
		t.Fatal(err)
	}
	got, err := AllowedCPUs()
	if err != nil || !reflect.DeepEqual(got, []int{last}) {
		t.Fatalf("after pinning to %d: %v, %v", last, got, err)
	}
	for _, bad := range []struct {
		cpu  int
		want string
	}{{last + 1000, "none of them is online"}, {1 << 20, "out of range"}, {-1, "out of range"}} {
		if err := PinProcess([]int{bad.cpu}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("pin to CPU %d: %v, want an error with %q", bad.cpu, err, bad.want)
		}
	}
	if err := PinProcess(allowed); err != nil {
		t.Fatalf("restore the affinity: %v", err)
	}
	if got, _ := AllowedCPUs(); !reflect.DeepEqual(got, allowed) {
		t.Errorf("restored affinity %v, want %v", got, allowed)
	}
}
