package shards

import (
	"reflect"
	"strings"
	"testing"
)

func TestExpandBraces(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		want    []string
	}{
		{"train.tar", []string{"train.tar"}},
		{"train-{000000..000003}.tar", []string{"train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar"}},
		{"s-{8..11}", []string{"s-8", "s-9", "s-10", "s-11"}},
		{"s-{08..11}", []string{"s-08", "s-09", "s-10", "s-11"}},
		{"s-{98..101}", []string{"s-98", "s-99", "s-100", "s-101"}},
		{"s-{0..0}", []string{"s-0"}},
		{"{train,val}.tar", []string{"train.tar", "val.tar"}},
		{"x{,.bak}", []string{"x", "x.bak"}},
		{"{a,b}/{0..1}-{x,y}", []string{"a/0-x", "a/0-y", "a/1-x", "a/1-y", "b/0-x", "b/0-y", "b/1-x", "b/1-y"}},
		{"{1..2}{a,b}", []string{"1a", "1b", "2a", "2b"}},
	} {
		got, err := ExpandBraces(tc.pattern)
		if err != nil {
			t.Errorf("ExpandBraces(%q): %v", tc.pattern, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ExpandBraces(%q) = %q, want %q", tc.pattern, got, tc.want)
		}
	}
	got, err := ExpandBraces("train-{000000..127999}.tar")
	if err != nil || len(got) != 128000 || got[127999] != "train-127999.tar" {
		t.Errorf("large range: %d names, %v", len(got), err)
	}
	for pattern, wantErr := range map[string]string{
		"":                          "empty",
		"a{1..3":                    "never closed",
		"a}b":                       "no matching",
		"a{b{c,d}}":                 "nested",
		"a{}":                       "empty brace group",
		"a{b}":                      "neither",
		"a{3..1}":                   "backwards",
		"a{x..y}":                   "decimal",
		"a{-1..3}":                  "decimal",
		"a{1..}":                    "decimal",
		"a{1...3}":                  "decimal",
		"{0..999999999}":            "more than 1000000",
		"{0..999}{0..999}{0..9}":    "more than 1000000",
		"{0..99999999999999999999}": "too large",
	} {
		_, err := ExpandBraces(pattern)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("ExpandBraces(%q) = %v, want an error containing %q", pattern, err, wantErr)
		}
	}
}
