//go:build !linux

package worker

import (
	"errors"
	"runtime"
)

// AllowedCPUs is every CPU (affinity is not read on this system).
func AllowedCPUs() ([]int, error) {
	cpus := make([]int, runtime.NumCPU())
	for i := range cpus {
		cpus[i] = i
	}
	return cpus, nil
}

// PinProcess is not supported on this system.
func PinProcess(cpus []int) error { return errors.New("pinning to CPUs is supported on Linux only") }
