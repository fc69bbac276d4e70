//go:build !race

package collective

// addSSE adds 16·blocks float32s of src into dst (add_amd64.s).
//
//go:noescape
func addSSE(dst, src *float32, blocks int)

// addFast adds the longest prefix it can do in assembly and returns its
// length. Race builds use the Go loop, which the race detector can see.
func addFast(dst, src []float32) int {
	blocks := len(dst) / 16
	if blocks > 0 {
		addSSE(&dst[0], &src[0], blocks)
	}
	return 16 * blocks
}
