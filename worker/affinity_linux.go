package worker

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// AllowedCPUs is the CPUs this process may run on.
func AllowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("read the CPU affinity: %w", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// PinProcess confines every thread of this process to cpus, and so every
// thread started later (a new thread inherits its creator's CPUs). Call
// it early, before libtorch starts its thread pools.
func PinProcess(cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		if c < 0 || c >= len(set)*64 {
			return fmt.Errorf("CPU %d is out of range 0..%d", c, len(set)*64-1)
		}
		set.Set(c)
	}
	if set.Count() == 0 {
		return fmt.Errorf("no CPUs to pin to")
	}
	// Twice: a thread started during the first pass by a thread not yet
	// pinned is caught by the second.
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("list this process's threads: %w", err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			err = unix.SchedSetaffinity(tid, &set)
			if err == unix.EINVAL {
				allowed, _ := AllowedCPUs()
				return fmt.Errorf("pin to CPUs %s: none of them is online and allowed to this process (this process may use %s)", FormatCPUList(cpus), FormatCPUList(allowed))
			}
			if err != nil && err != unix.ESRCH {
				return fmt.Errorf("pin thread %d to CPUs %s: %w", tid, FormatCPUList(cpus), err)
			}
		}
	}
	return nil
}
