//go:build !race

package collective

import "golang.org/x/sys/cpu"

// addSSE adds 16·blocks float32s of src into dst (add_amd64.s).
//
//go:noescape
func addSSE(dst, src *float32, blocks int)

// addAVX2 adds 32·blocks float32s of src into dst (add_amd64.s).
//
//go:noescape
func addAVX2(dst, src *float32, blocks int)

// haveAVX2 picks the 8-wide add where the CPU has it.
var haveAVX2 = cpu.X86.HasAVX2

// addFast adds the longest prefix it can do in assembly and returns its
// length. Race builds use the Go loop, which the race detector can see.
func addFast(dst, src []float32) int {
	done := 0
	if haveAVX2 {
		if blocks := len(dst) / 32; blocks > 0 {
			addAVX2(&dst[0], &src[0], blocks)
			done = 32 * blocks
		}
	}
	if blocks := (len(dst) - done) / 16; blocks > 0 {
		addSSE(&dst[done], &src[done], blocks)
		done += 16 * blocks
	}
	return done
}
