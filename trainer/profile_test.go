package trainer

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestParseOpProfile(t *testing.T) {
	tests := []struct {
		name  string
		trace string
		want  map[string]OpStat // by name: calls, self, total
		err   string
	}{
		{
			name: "nested calls on one thread, array form",
			trace: `[{"name":"outer","ph":"X","ts":0,"dur":10,"tid":1},
			         {"name":"inner","ph":"X","ts":1,"dur":3,"tid":1},
			         {"name":"inner","ph":"X","ts":5,"dur":4,"tid":1},
			         {"name":"leaf","ph":"X","ts":2,"dur":1,"tid":1}]`,
			want: map[string]OpStat{
				"outer": {Calls: 1, SelfUs: 3, TotalUs: 10},
				"inner": {Calls: 2, SelfUs: 6, TotalUs: 7},
				"leaf":  {Calls: 1, SelfUs: 1, TotalUs: 1},
			},
		},
		{
			name: "threads apart, object form, instant events ignored",
			trace: `{"traceEvents":[{"name":"a","ph":"X","ts":0,"dur":10,"tid":1},
			         {"name":"b","ph":"X","ts":2,"dur":5,"tid":"2"},
			         {"name":"mark","ph":"i","ts":3,"tid":1}]}`,
			want: map[string]OpStat{
				"a": {Calls: 1, SelfUs: 10, TotalUs: 10},
				"b": {Calls: 1, SelfUs: 5, TotalUs: 5},
			},
		},
		{
			name:  "a sibling that starts as its neighbour ends is not its child",
			trace: `[{"name":"x","ph":"X","ts":0,"dur":2,"tid":1},{"name":"y","ph":"X","ts":2,"dur":2,"tid":1}]`,
			want: map[string]OpStat{
				"x": {Calls: 1, SelfUs: 2, TotalUs: 2},
				"y": {Calls: 1, SelfUs: 2, TotalUs: 2},
			},
		},
		{name: "not JSON", trace: `{`, err: "not a Chrome trace"},
		{name: "no complete events", trace: `[{"name":"m","ph":"i","ts":0}]`, err: "no complete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOpProfile([]byte(tt.trace))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want an error with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d operators %+v, want %d", len(got), got, len(tt.want))
			}
			for i, s := range got {
				w := tt.want[s.Name]
				if s.Calls != w.Calls || s.SelfUs != w.SelfUs || s.TotalUs != w.TotalUs {
					t.Errorf("%s: got %+v, want %+v", s.Name, s, w)
				}
				if i > 0 && got[i-1].SelfUs < s.SelfUs {
					t.Errorf("not sorted by self time: %+v", got)
				}
			}
		})
	}
}

// TestProfileStepsTracesTheStep profiles two tiny stage-1 steps and reads
// the trace back: the step's matrix products and its backward are there,
// and the operators' self times add up to no more than the wall time.
func TestProfileStepsTracesTheStep(t *testing.T) {
	lib := loadLib(t)
	m, err := lib.NewModel(TinyStage1(), "cpu", 3)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_, batch := SyntheticBatch(0, 0, 4, 0, 4)
	path := filepath.Join(t.TempDir(), "trace.json")
	if err := m.ProfileSteps(batch, 2, path); err != nil {
		t.Fatal(err)
	}
	ops, err := ReadOpProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, o := range ops {
		calls[o.Name] = o.Calls
		if o.SelfUs > o.TotalUs+1e-9 {
			t.Errorf("%s: self %.1f µs above total %.1f µs", o.Name, o.SelfUs, o.TotalUs)
		}
	}
	for _, want := range []string{"aten::mm", "aten::bmm", "aten::_softmax"} {
		if calls[want] == 0 {
			t.Errorf("no %s in the profile of two steps (operators: %d)", want, len(ops))
		}
	}
	var backward bool
	for name := range calls {
		backward = backward || strings.Contains(name, "Backward")
	}
	if !backward {
		t.Error("no backward operators in the profile")
	}
	if err := m.ProfileSteps(batch, 1, filepath.Join(t.TempDir(), "missing", "trace.json")); err == nil || !strings.Contains(err.Error(), "open") {
		t.Errorf("profile into a missing directory: %v, want an open error", err)
	}
}
