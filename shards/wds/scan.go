package wds

import (
	"fmt"
	"io"
)

// Stats counts what Scan saw in a shard.
type Stats struct {
	Samples        int   // all samples, good and bad (the shard's sample count)
	BadSamples     int   // samples returned with Err set
	SkippedMembers int   // members not part of any sample ("__" or "." names, no field)
	Bytes          int64 // field bytes of the good samples
}

// Scan reads a whole shard, calling fn for each sample (fn may be nil), and
// returns the stats. Bad samples are counted and passed to fn like the
// others. Scan stops at the first error from fn (returned wrapped, with the
// shard and key) or at a broken stream (an error wrapping ErrCorrupt); the
// stats count what was read up to then. An empty shard gives zero Stats and
// no error.
func Scan(r io.Reader, shard string, lim Limits, fn func(Sample) error) (Stats, error) {
	return scan(NewReader(r, shard, lim), shard, fn)
}

// ScanBytes is Scan over a shard held whole in memory; the samples' fields
// are subslices of data (see NewBytesReader).
func ScanBytes(data []byte, shard string, lim Limits, fn func(Sample) error) (Stats, error) {
	return scan(NewBytesReader(data, shard, lim), shard, fn)
}

// ScanInPlace is Scan reading the shard into buf as it parses (see
// NewInPlaceReader).
func ScanInPlace(r io.Reader, buf []byte, shard string, lim Limits, fn func(Sample) error) (Stats, error) {
	return scan(NewInPlaceReader(r, buf, shard, lim), shard, fn)
}

func scan(rd *Reader, shard string, fn func(Sample) error) (Stats, error) {
	var st Stats
	for {
		s, err := rd.Next()
		st.SkippedMembers = rd.SkippedMembers()
		if err == io.EOF {
			return st, nil
		}
		if err != nil {
			return st, err
		}
		st.Samples++
		if s.Err != nil {
			st.BadSamples++
		}
		st.Bytes += s.Bytes()
		if fn != nil {
			if err := fn(s); err != nil {
				return st, fmt.Errorf("wds: shard %q: sample %q: %w", shard, s.Key, err)
			}
		}
	}
}
