package cliutil

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{"80GiB", 80 << 30, ""},
		{"80gib", 80 << 30, ""},
		{"80 GiB", 80 << 30, ""},
		{"80GB", 80_000_000_000, ""},
		{"81920MiB", 80 << 30, ""},
		{"1.5TiB", 3 << 39, ""},
		{"85899345920", 80 << 30, ""},
		{"512B", 512, ""},
		{"2KiB", 2048, ""},
		{"", 0, "want bytes or a number with a unit"},
		{"GiB", 0, "want bytes or a number with a unit"},
		{"80 gigs", 0, "want bytes or a number with a unit"},
		{"8e10", 0, "want bytes or a number with a unit"},
		{"0x10GiB", 0, "want bytes or a number with a unit"},
		{"-80GiB", 0, "at least one byte"},
		{"0", 0, "at least one byte"},
		{"NaNGiB", 0, "want bytes"},
		{"99999999TiB", 0, "below 4 EiB"},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.err == "" && (err != nil || got != tt.want) {
			t.Errorf("%q: %d, %v; want %d", tt.in, got, err, tt.want)
		}
		if tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%q: %d, %v; want an error mentioning %q", tt.in, got, err, tt.err)
		}
	}
}
