// Package shards owns lavit's training data sets: WebDataset tar shards,
// the manifest that freezes a set (sizes, sample counts, checksums), the
// verified prefetching loader, and writing sets (synth, pack). Its
// subpackages hold the tar reader and writer (wds), the deterministic
// sample stream that decides which sample each rank reads at each step
// (stream), image and caption decoding (decode), the procedural data set
// (synth) and the caption tokenizers (text). Where the shards' bytes live,
// a directory or an S3 prefix, is package objstore's business.
package shards
