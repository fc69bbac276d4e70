package runspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/lavit-org/lavit/configs"
)

// FuzzParse feeds Parse arbitrary YAML and --set lines (one per line of
// sets). It must never panic; an error must be non-empty; a spec it
// accepts must validate, and must come back the same through YAML (the
// keys written out and parsed again) and through JSON (as the coordinator
// stores it).
func FuzzParse(f *testing.F) {
	for _, name := range configs.ExampleNames() {
		data, err := configs.Example(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, "")
	}
	f.Add([]byte(base), "steps=20\noptim.lr=0.5")
	f.Add([]byte(base2), "collective.backend=nccl")
	f.Add([]byte(base), "precision=bf16\ncollective.reduce_dtype=bf16\ncollective.bucket_mb=0.5")
	f.Add([]byte(base), "steps=\nepochs=3")
	f.Add([]byte(""), "")
	f.Add([]byte("stage: [1\n"), "")
	f.Add([]byte("- stage: 1\n"), "")
	f.Add([]byte("a: &a [*a, *a]\n"), "")
	f.Add([]byte("data: &x {url: *x}\n"), "")
	f.Add([]byte("&r {stage: *r}\n"), "")
	f.Add([]byte(base+"---\nstage: 2\n"), "")
	f.Add([]byte(base), "global_batch=1048577")
	f.Add([]byte(base), "checkpoint.every_minutes=1e300")
	f.Add([]byte(base), "data=x\nsteps.x=1\n=5")
	f.Fuzz(func(t *testing.T, data []byte, sets string) {
		var setList []string
		if sets != "" {
			setList = strings.Split(sets, "\n")
		}
		s, err := Parse("f.yaml", data, setList)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if err := s.validate(false); err != nil {
			t.Fatalf("Parse accepted a spec that does not validate: %v", err)
		}
		want := *s
		want.origin, want.file = nil, ""

		// YAML: every key written out, parsed again.
		y, err := yaml.Marshal(&want)
		if err != nil {
			t.Fatalf("yaml.Marshal: %v", err)
		}
		again, err := Parse("again.yaml", y, nil)
		if err != nil {
			t.Fatalf("the spec written as YAML does not parse: %v\n%s", err, y)
		}
		again.origin, again.file = nil, ""
		if !reflect.DeepEqual(*again, want) {
			t.Fatalf("YAML round trip:\n got %+v\nwant %+v\n%s", *again, want, y)
		}

		// JSON, decoded as the coordinator does.
		checkJSONRoundTrip(t, &want, false)
	})
}

// FuzzValidateJSON feeds Validate the JSON a submit request carries,
// decoded as the coordinator decodes it. It must never panic; a spec it
// accepts must come back the same through JSON and validate again.
func FuzzValidateJSON(f *testing.F) {
	for _, name := range configs.ExampleNames() {
		data, _ := configs.Example(name)
		s, err := Parse(name+".yaml", data, nil)
		if err != nil {
			f.Fatal(err)
		}
		if err := s.Resolve("/work", func(string) ([]byte, error) { return nil, errors.New("no files") }); err != nil {
			f.Fatal(err)
		}
		b, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	good := `{"stage":1,"model":"tiny-stage1","steps":10,"global_batch":4,"min_workers":1,"max_workers":2,"device":"cpu",` +
		`"data":{"url":"file:///d","block_shards":4},"stage1":{"phase_a_steps":5,"kmeans_batches":2},` +
		`"collective":{"backend":"ring","timeout":"60s"},"checkpoint":{"url":"s3://b/c","every_steps":5,"keep":2},"metrics":{"every_steps":1}}`
	f.Add([]byte(good))
	f.Add([]byte(strings.Replace(good, `"steps":10`, `"steps":10,"model_config":{"stage":1,"tokenizer":{"width":65536}}`, 1)))
	f.Add([]byte(strings.Replace(good, `"global_batch":4`, `"global_batch":1e300`, 1)))
	f.Add([]byte(`{"stage":1}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"optim":{"lr":null}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Spec
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		checkJSONRoundTrip(t, &s, true)
	})
}

// checkJSONRoundTrip marshals a valid spec, decodes it as the coordinator
// does, and requires the same spec, still valid.
func checkJSONRoundTrip(t *testing.T, want *Spec, strictURLs bool) {
	t.Helper()
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	var got Spec
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("the spec written as JSON does not decode: %v\n%s", err, b)
	}
	if err := got.validate(strictURLs); err != nil {
		t.Fatalf("the spec written as JSON does not validate: %v\n%s", err, b)
	}
	w := *want
	w.origin, w.file = nil, ""
	if len(w.ModelConfig) > 0 {
		// Marshal compacts the raw config; compare it compacted.
		var c bytes.Buffer
		if err := json.Compact(&c, w.ModelConfig); err != nil {
			t.Fatalf("model_config: %v", err)
		}
		w.ModelConfig = c.Bytes()
	}
	if !reflect.DeepEqual(got, w) {
		t.Fatalf("JSON round trip:\n got %+v\nwant %+v\n%s", got, w, b)
	}
}
