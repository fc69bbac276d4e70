//go:build !amd64 || race

package collective

// haveAVX2 is false where there is no assembly (see add_amd64.go).
var haveAVX2 = false

func addFast(dst, src []float32) int { return 0 }
