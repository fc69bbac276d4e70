package shards

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxBraceExpansion caps how many names ExpandBraces produces: a typo such
// as {0..99999999} fails fast instead of eating the machine's memory.
const MaxBraceExpansion = 1_000_000

// ExpandBraces expands a shard-list pattern into names, in order:
//
//	train-{000000..000127}.tar  -> train-000000.tar ... train-000127.tar
//	{train,val}-{0..2}.tar      -> train-0.tar train-1.tar train-2.tar val-0.tar ...
//
// A group is either a numeric range {lo..hi} (lo <= hi, non-negative
// decimal; names are zero-padded to the width of lo as written) or comma
// alternatives {a,b,c} (an alternative may be empty). Several groups give
// their cartesian product, the leftmost group varying slowest. Nested or
// unbalanced braces, empty groups, groups that are neither a range nor
// alternatives ({a}), backwards ranges and expansions of more than
// MaxBraceExpansion names are errors. A pattern without braces
// expands to itself.
func ExpandBraces(pattern string) ([]string, error) {
	if pattern == "" {
		return nil, errors.New("shards: empty shard pattern")
	}
	// Each part is a list of alternatives; literal text is a one-item part.
	var parts [][]string
	total := 1
	rest := pattern
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			parts = append(parts, []string{rest})
			break
		}
		if rest[open] == '}' {
			return nil, fmt.Errorf("shards: pattern %q: '}' at byte %d has no matching '{'", pattern, len(pattern)-len(rest)+open)
		}
		if open > 0 {
			parts = append(parts, []string{rest[:open]})
		}
		closeRel := strings.IndexAny(rest[open+1:], "{}")
		if closeRel < 0 {
			return nil, fmt.Errorf("shards: pattern %q: '{' at byte %d is never closed", pattern, len(pattern)-len(rest)+open)
		}
		if rest[open+1+closeRel] == '{' {
			return nil, fmt.Errorf("shards: pattern %q: nested braces are not supported", pattern)
		}
		body := rest[open+1 : open+1+closeRel]
		alts, err := expandGroup(pattern, body)
		if err != nil {
			return nil, err
		}
		if total > MaxBraceExpansion/len(alts) {
			return nil, fmt.Errorf("shards: pattern %q expands to more than %d names", pattern, MaxBraceExpansion)
		}
		total *= len(alts)
		parts = append(parts, alts)
		rest = rest[open+1+closeRel+1:]
	}

	out := []string{""}
	for _, alts := range parts {
		next := make([]string, 0, len(out)*len(alts))
		for _, prefix := range out {
			for _, alt := range alts {
				next = append(next, prefix+alt)
			}
		}
		out = next
	}
	return out, nil
}

// expandGroup expands the text between one pair of braces.
func expandGroup(pattern, body string) ([]string, error) {
	if body == "" {
		return nil, fmt.Errorf("shards: pattern %q: empty brace group {}", pattern)
	}
	if strings.Contains(body, ",") {
		return strings.Split(body, ","), nil
	}
	lo, hi, ok := strings.Cut(body, "..")
	if !ok {
		return nil, fmt.Errorf("shards: pattern %q: brace group {%s} is neither a range {lo..hi} nor alternatives {a,b}", pattern, body)
	}
	if !isDigits(lo) || !isDigits(hi) {
		return nil, fmt.Errorf("shards: pattern %q: range {%s} needs two non-negative decimal numbers", pattern, body)
	}
	from, err1 := strconv.ParseUint(lo, 10, 63)
	to, err2 := strconv.ParseUint(hi, 10, 63)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("shards: pattern %q: range {%s} has a number that is too large", pattern, body)
	}
	if from > to {
		return nil, fmt.Errorf("shards: pattern %q: range {%s} runs backwards (%d > %d)", pattern, body, from, to)
	}
	if to-from >= MaxBraceExpansion {
		return nil, fmt.Errorf("shards: pattern %q expands to more than %d names", pattern, MaxBraceExpansion)
	}
	width := len(lo)
	alts := make([]string, 0, to-from+1)
	for v := from; v <= to; v++ {
		s := strconv.FormatUint(v, 10)
		if len(s) < width {
			s = strings.Repeat("0", width-len(s)) + s
		}
		alts = append(alts, s)
	}
	return alts, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
