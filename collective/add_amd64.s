//go:build !race

#include "textflag.h"

// func addSSE(dst, src *float32, blocks int)
// dst[i] += src[i] for 16·blocks elements, four 4-wide SSE adds per block
// (SSE is in every amd64 CPU, so no feature check is needed).
TEXT ·addSSE(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ blocks+16(FP), CX
	TESTQ CX, CX
	JZ   done

loop:
	MOVUPS 0(DI), X0
	MOVUPS 16(DI), X1
	MOVUPS 32(DI), X2
	MOVUPS 48(DI), X3
	MOVUPS 0(SI), X4
	MOVUPS 16(SI), X5
	MOVUPS 32(SI), X6
	MOVUPS 48(SI), X7
	ADDPS  X4, X0
	ADDPS  X5, X1
	ADDPS  X6, X2
	ADDPS  X7, X3
	MOVUPS X0, 0(DI)
	MOVUPS X1, 16(DI)
	MOVUPS X2, 32(DI)
	MOVUPS X3, 48(DI)
	ADDQ   $64, DI
	ADDQ   $64, SI
	DECQ   CX
	JNZ    loop

done:
	RET

// func addAVX2(dst, src *float32, blocks int)
// dst[i] += src[i] for 32·blocks elements, four 8-wide AVX adds per block.
// Only called when the CPU has AVX2 (see add_amd64.go).
TEXT ·addAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ blocks+16(FP), CX
	TESTQ CX, CX
	JZ   avxdone

avxloop:
	VMOVUPS 0(SI), Y4
	VMOVUPS 32(SI), Y5
	VMOVUPS 64(SI), Y6
	VMOVUPS 96(SI), Y7
	VADDPS  0(DI), Y4, Y0
	VADDPS  32(DI), Y5, Y1
	VADDPS  64(DI), Y6, Y2
	VADDPS  96(DI), Y7, Y3
	VMOVUPS Y0, 0(DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	ADDQ    $128, DI
	ADDQ    $128, SI
	DECQ    CX
	JNZ     avxloop
	VZEROUPPER

avxdone:
	RET

