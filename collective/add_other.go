//go:build !amd64 || race

package collective

func addFast(dst, src []float32) int { return 0 }
