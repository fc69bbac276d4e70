package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/lavit-org/lavit/internal/wire"
)

// DetectDevices lists what this host can train on: always the CPU, plus one
// cuda:N per NVIDIA GPU device node (/dev/nvidiaN). Detection reads device
// files only, so it works without a driver library or cgo.
//
// LAVIT_FAKE_GPUS=N makes it report N more, cuda:0 … cuda:N−1 (tests of
// one worker per GPU on machines without GPUs; they cannot train on them).
func DetectDevices() []wire.Device {
	devs := []wire.Device{{Name: "cpu", Kind: "cpu", Detail: fmt.Sprintf("%d cores", runtime.NumCPU())}}
	if n, err := strconv.Atoi(os.Getenv("LAVIT_FAKE_GPUS")); err == nil && n > 0 {
		for i := range n {
			devs = append(devs, wire.Device{Name: fmt.Sprintf("cuda:%d", i), Kind: "cuda", Detail: "fake GPU (LAVIT_FAKE_GPUS)"})
		}
		return devs
	}
	paths, _ := filepath.Glob("/dev/nvidia[0-9]*")
	var idx []int
	for _, p := range paths {
		if n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), "nvidia")); err == nil {
			idx = append(idx, n)
		}
	}
	sort.Ints(idx)
	for _, n := range idx {
		devs = append(devs, wire.Device{Name: fmt.Sprintf("cuda:%d", n), Kind: "cuda", Detail: gpuModel(n)})
	}
	return devs
}

// gpuModel reads the GPU's model name from the driver's procfs, if present.
func gpuModel(n int) string {
	dirs, _ := filepath.Glob("/proc/driver/nvidia/gpus/*/information")
	sort.Strings(dirs)
	if n >= len(dirs) {
		return ""
	}
	b, err := os.ReadFile(dirs[n])
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Model" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// PickDevice resolves the --device flag against the detected devices:
// "auto" takes the first GPU, else the CPU; a named device must exist.
func PickDevice(flag string, devs []wire.Device) (string, error) {
	if flag == "" || flag == "auto" {
		for _, d := range devs {
			if d.Kind == "cuda" {
				return d.Name, nil
			}
		}
		return "cpu", nil
	}
	if flag != "cpu" && !strings.HasPrefix(flag, "cuda:") {
		return "", fmt.Errorf("--device %q: want cpu, cuda:N or auto", flag)
	}
	var names []string
	for _, d := range devs {
		if d.Name == flag {
			return flag, nil
		}
		names = append(names, d.Name)
	}
	return "", fmt.Errorf("--device %q: not found on this host (found: %s)", flag, strings.Join(names, ", "))
}

// DefaultID is a worker's id when --id is not given: the host name, plus
// -cudaN on GPU N (so the workers of one host's GPUs are told apart).
func DefaultID(host, device string) string {
	if n, ok := strings.CutPrefix(device, "cuda:"); ok {
		return host + "-cuda" + n
	}
	return host
}

// ThreadsEach is the libtorch threads each of `workers` worker processes
// sharing a host of `cores` cores should use, so that together they do not
// oversubscribe it: an even share, at least one. (libtorch's default is
// one thread per core in every process: with several workers per host
// they fight over the cores.)
func ThreadsEach(cores, workers int) int {
	if workers < 1 {
		workers = 1
	}
	return max(1, cores/workers)
}

// AddDeviceMemory records the total memory of the device this worker
// trains on, as memory (a CUDA runtime's cudaMemGetInfo) reports it: in
// bytes (MemoryBytes, which the coordinator plans runs against) and
// appended to its detail (e.g. "NVIDIA H200, 140.4 GiB"); a CPU device, or
// an error, leaves the list as it is.
func AddDeviceMemory(devs []wire.Device, device string, memory func(index int) (free, total uint64, err error)) {
	rest, ok := strings.CutPrefix(device, "cuda:")
	if !ok {
		return
	}
	idx, err := strconv.Atoi(rest)
	if err != nil {
		return
	}
	_, total, err := memory(idx)
	if err != nil || total == 0 {
		return
	}
	for i := range devs {
		if devs[i].Name == device {
			devs[i].MemoryBytes = total
			mem := fmt.Sprintf("%.1f GiB", float64(total)/(1<<30))
			if devs[i].Detail == "" {
				devs[i].Detail = mem
			} else {
				devs[i].Detail += ", " + mem
			}
		}
	}
}
