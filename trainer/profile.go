package trainer

/*
#include <stdlib.h>
#include "shim_loader.h"
*/
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"unsafe"
)

// ProfileSteps runs one step and then n more under libtorch's profiler,
// in C++ with no reduction (like BenchSteps), and writes the n steps'
// operators to tracePath as a Chrome trace (chrome://tracing, Perfetto;
// ReadOpProfile sums it per operator).
func (m *Model) ProfileSteps(b *Batch, n int, tracePath string) error {
	if err := m.checkBatch(b); err != nil {
		return err
	}
	path := C.CString(tracePath)
	defer C.free(unsafe.Pointer(path))
	return withThread(func() error {
		var p runtime.Pinner
		defer p.Unpin()
		if C.c_profile_steps(&m.lib.api, m.m, cBatch(b, &p), C.int64_t(n), path) != 0 {
			return m.lib.lastError("profile steps")
		}
		return nil
	})
}

// OpStat is one operator's share of a profile.
type OpStat struct {
	Name    string
	Calls   int
	SelfUs  float64 // time in the operator less the operators it called
	TotalUs float64 // time in the operator, callees included
}

// traceEvent is a Chrome trace's complete event ("ph": "X").
type traceEvent struct {
	Name  string          `json:"name"`
	Phase string          `json:"ph"`
	Ts    float64         `json:"ts"`
	Dur   float64         `json:"dur"`
	Tid   json.RawMessage `json:"tid"`
}

// ReadOpProfile reads a Chrome trace (libtorch's legacy profiler, or
// PyTorch's export_chrome_trace: a JSON array of events or an object with
// traceEvents) and sums its complete events per name, busiest first by
// self time.
func ReadOpProfile(path string) ([]OpStat, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseOpProfile(raw)
}

// ParseOpProfile is ReadOpProfile on the trace's bytes. An event's self
// time is its duration less its direct children's on the same thread (an
// event starting within another and ending no later is its child).
func ParseOpProfile(raw []byte) ([]OpStat, error) {
	var events []traceEvent
	if err := json.Unmarshal(raw, &events); err != nil {
		var wrapped struct {
			TraceEvents []traceEvent `json:"traceEvents"`
		}
		if err2 := json.Unmarshal(raw, &wrapped); err2 != nil {
			return nil, fmt.Errorf("not a Chrome trace: %w", err)
		}
		events = wrapped.TraceEvents
	}
	byThread := map[string][]traceEvent{}
	for _, e := range events {
		if e.Phase == "X" && e.Dur >= 0 {
			byThread[string(e.Tid)] = append(byThread[string(e.Tid)], e)
		}
	}
	if len(byThread) == 0 {
		return nil, errors.New("the trace has no complete (\"X\") events")
	}
	stats := map[string]*OpStat{}
	for _, evs := range byThread {
		// Parents before children: by start, the longer first.
		sort.SliceStable(evs, func(i, j int) bool {
			if evs[i].Ts != evs[j].Ts {
				return evs[i].Ts < evs[j].Ts
			}
			return evs[i].Dur > evs[j].Dur
		})
		self := make([]float64, len(evs))
		var open []int // indices of the events enclosing the current one
		for i, e := range evs {
			self[i] = e.Dur
			for len(open) > 0 {
				p := evs[open[len(open)-1]]
				if e.Ts < p.Ts+p.Dur && e.Ts+e.Dur <= p.Ts+p.Dur {
					break
				}
				open = open[:len(open)-1]
			}
			if len(open) > 0 {
				self[open[len(open)-1]] -= e.Dur
			}
			open = append(open, i)
		}
		for i, e := range evs {
			s := stats[e.Name]
			if s == nil {
				s = &OpStat{Name: e.Name}
				stats[e.Name] = s
			}
			s.Calls++
			s.SelfUs += max(self[i], 0)
			s.TotalUs += e.Dur
		}
	}
	out := make([]OpStat, 0, len(stats))
	for _, s := range stats {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SelfUs != out[j].SelfUs {
			return out[i].SelfUs > out[j].SelfUs
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}
