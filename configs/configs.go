// Package configs holds lavit's built-in configs, embedded in the binaries:
// the model configs (models/NAME.json, read by the trainer) and the example
// run specs (NAME.yaml, read by `lavit-coord run submit -f`).
//
// A run spec names its model either by one of these built-in names or by a
// path to a JSON file of the same form.
package configs

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
)

//go:embed models/*.json *.yaml
var files embed.FS

// Model returns the built-in model config NAME (the JSON of models/NAME.json).
func Model(name string) ([]byte, error) {
	names := ModelNames()
	if !contains(names, name) {
		return nil, fmt.Errorf("unknown built-in model %q (known: %s)", name, strings.Join(names, ", "))
	}
	return files.ReadFile("models/" + name + ".json")
}

// ModelNames lists the built-in models, sorted.
func ModelNames() []string { return list("models/*.json", ".json") }

// Example returns the example run spec NAME (NAME.yaml; the suffix is
// optional).
func Example(name string) ([]byte, error) {
	name = strings.TrimSuffix(name, ".yaml")
	names := ExampleNames()
	if !contains(names, name) {
		return nil, fmt.Errorf("unknown example run spec %q (known: %s)", name, strings.Join(names, ", "))
	}
	return files.ReadFile(name + ".yaml")
}

// ExampleNames lists the example run specs (without .yaml), sorted.
func ExampleNames() []string { return list("*.yaml", ".yaml") }

func list(pattern, suffix string) []string {
	matches, err := fs.Glob(files, pattern)
	if err != nil {
		panic(err) // the patterns are constants
	}
	names := make([]string, 0, len(matches))
	for _, m := range matches {
		names = append(names, strings.TrimSuffix(path.Base(m), suffix))
	}
	sort.Strings(names)
	return names
}

func contains(names []string, name string) bool {
	i := sort.SearchStrings(names, name)
	return i < len(names) && names[i] == name
}
