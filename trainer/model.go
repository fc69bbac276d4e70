package trainer

/*
#include <stdlib.h>
#include "shim_loader.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"
)

// withThread runs fn on a locked OS thread, so the shim's thread-local
// error message is read on the thread that failed.
func withThread(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return fn()
}

// ParamInfo is one parameter's place in the flat buffers.
type ParamInfo struct {
	Name   string  `json:"name"`
	Shape  []int64 `json:"shape"`
	Offset int64   `json:"offset"`
	Numel  int64   `json:"numel"`
	Group  string  `json:"group"`
}

// Info describes a model.
type Info struct {
	Stage      int         `json:"stage"`
	Device     string      `json:"device"`
	Params     []ParamInfo `json:"params"`
	ParamCount int64       `json:"param_count"`
	// Frozen lists the pretrained, never-trained parameters (the ViT
	// encoder); they are not in the flat buffers.
	Frozen      []ParamInfo `json:"frozen"`
	FrozenCount int64       `json:"frozen_count"`
	// GradNumel is the flat buffers' length in values: ParamCount,
	// padded to world blocks under ZeRO (even blocks in bf16).
	GradNumel int64 `json:"grad_numel"`
	// GradWords and ParamWords are the lengths, in float32 words, of the
	// gradient buffer the collective sums and of the parameter buffer the
	// all-gather moves (a bf16 buffer packs two values per word; in bf16
	// with float32 reduction the gradients are summed in a float32
	// buffer of GradNumel words).
	GradWords  int64 `json:"grad_words"`
	ParamWords int64 `json:"param_words"`
	// GatherParts is how many flat float32 tensors GatherState collects
	// (the Adam moments; in bf16 the master weights too).
	GatherParts int `json:"gather_parts"`
	// Precision is "fp32" or "bf16" (SetPrecision); ReduceDtype the
	// dtype the gradients are summed in, "fp32" or "bf16".
	Precision   string `json:"precision"`
	ReduceDtype string `json:"reduce_dtype"`
	// Buckets are the gradient buckets (SetBuckets): [word offset, words]
	// in the gradient buffer, in the order backward makes them ready.
	Buckets [][2]int64 `json:"buckets"`
	// Sharding (SetShard): ZeRO stage, rank, world, and this rank's shard
	// of the flat buffers.
	Zero        int   `json:"zero"`
	Rank        int   `json:"rank"`
	World       int   `json:"world"`
	ShardOffset int64 `json:"shard_offset"`
	ShardNumel  int64 `json:"shard_numel"`
	// Device bytes the buffers hold: the flat parameters and gradients,
	// the optimizer state (moments, and master weights under ZeRO; zero
	// until the first step or state load allocates it), the frozen
	// parameters.
	ParamBytes     int64  `json:"param_bytes"`
	GradBytes      int64  `json:"grad_bytes"`
	OptimBytes     int64  `json:"optim_bytes"`
	FrozenBytes    int64  `json:"frozen_bytes"`
	PreStats       int64  `json:"pre_stats"`
	PostStats      int64  `json:"post_stats"`
	VQOn           bool   `json:"vq_on"`
	SelectorFrozen bool   `json:"selector_frozen"`
	AdamT          int64  `json:"adam_t"`
	Patches        int64  `json:"patches"`
	Width          int64  `json:"width"`
	CodeDim        int64  `json:"code_dim"`
	Codebook       int64  `json:"codebook"`
	Image          int64  `json:"image"`
	Channels       int64  `json:"channels"`
	Vocab          int64  `json:"vocab"`
	MaxLen         int64  `json:"max_len"`
	DModel         int64  `json:"d_model"`
	ImageInput     string `json:"image_input"`
	VisPatches     int64  `json:"vis_patches"`
	VisWidth       int64  `json:"vis_width"`
}

// Model is one LaVIT model (stage 1 or stage 2) in the shim. A Model is not
// safe for concurrent use.
type Model struct {
	lib  *Lib
	m    *C.lavit_model
	info Info
	cfg  Config
	// Reused statistics buffers: a step allocates nothing on the Go heap
	// for them (the step loop is the hot path). tailBuf is the last
	// all-reduce's buffer (post statistics, loss, ride-along values).
	preBuf, postBuf, tailBuf []float32
	// microBatch is the samples per forward/backward (SetMicroBatch);
	// 0 runs the whole local batch at once.
	microBatch int
	// accPre and accPost sum the micro-batches' statistics of a step.
	accPre, accPost []float32
	// forceStaging makes a CPU model reduce its gradients the way a GPU
	// model does without NCCL (tests run that path on the CPU).
	forceStaging bool
	// overlapped: this step's gradients were reduced bucket by bucket
	// during its last backward (overlap.go), not after it.
	overlapped bool
	// bitwiseGroup, when positive, is the samples per group of a
	// bitwise-reproducible step (SetBitwise, bitwise.go).
	bitwiseGroup int
	bw           bitwiseScratch
}

// NewModel creates a model from a validated config on a device ("cpu",
// "cuda:0") with a seed.
func (l *Lib) NewModel(cfg Config, device string, seed uint64) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	js, err := json.Marshal(shimConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("encode model config: %w", err)
	}
	ccfg, cdev := C.CString(string(js)), C.CString(device)
	defer C.free(unsafe.Pointer(ccfg))
	defer C.free(unsafe.Pointer(cdev))
	mod := &Model{lib: l, cfg: cfg}
	err = withThread(func() error {
		mod.m = C.c_model_create(&l.api, ccfg, cdev, C.uint64_t(seed))
		if mod.m == nil {
			return l.lastError("create model")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	runtime.SetFinalizer(mod, (*Model).Close)
	if err := mod.refreshInfo(); err != nil {
		mod.Close()
		return nil, err
	}
	return mod, nil
}

func (m *Model) refreshInfo() error {
	s := m.lib.takeString(C.c_model_info(&m.lib.api, m.m))
	if s == "" {
		return errors.New("model info unavailable")
	}
	return json.Unmarshal([]byte(s), &m.info)
}

// Info describes the model (refreshed after VQ is switched on or a state loads).
func (m *Model) Info() Info { return m.info }

// Config is the model's config.
func (m *Model) Config() Config { return m.cfg }

// Close frees the model. It is safe to call twice.
func (m *Model) Close() {
	if m.m != nil {
		C.c_model_free(&m.lib.api, m.m)
		m.m = nil
		runtime.SetFinalizer(m, nil)
	}
}

// Grads is the flat gradient buffer (every trainable parameter's gradient
// is a view into it), valid until Close. On a CUDA model it is device memory
// and nil here; collectives use GradsDevicePtr.
func (m *Model) Grads() []float32 {
	if m.info.Device != "cpu" {
		return nil
	}
	n := int(C.c_grad_numel(&m.lib.api, m.m))
	return unsafe.Slice((*float32)(C.c_grad_data(&m.lib.api, m.m)), n)
}

// GradsBF16 reports whether the gradient buffer holds packed bf16 values
// (precision bf16 with collective.reduce_dtype bf16): a collective must
// sum it with a bf16 sum (Reduce.Grads), never as float32s.
func (m *Model) GradsBF16() bool { return m.info.ReduceDtype == "bf16" }

// GradsDevicePtr is the flat gradient buffer's address on the model's device.
func (m *Model) GradsDevicePtr() uintptr { return uintptr(C.c_grad_data(&m.lib.api, m.m)) }

// Params is the flat parameter buffer (CPU models only), same layout as
// the gradients; in bf16 two values per float32 word.
func (m *Model) Params() []float32 {
	if m.info.Device != "cpu" {
		return nil
	}
	return unsafe.Slice((*float32)(C.c_param_data(&m.lib.api, m.m)), int(m.info.ParamWords))
}

// ParamGrad copies parameter i's own .grad tensor (as autograd holds it).
func (m *Model) ParamGrad(i int) ([]float32, error) {
	if i < 0 || i >= len(m.info.Params) {
		return nil, fmt.Errorf("parameter index %d out of range", i)
	}
	out := make([]float32, m.info.Params[i].Numel)
	err := withThread(func() error {
		if C.c_param_grad(&m.lib.api, m.m, C.int64_t(i), floatPtr(out)) != 0 {
			return m.lib.lastError("parameter gradient")
		}
		return nil
	})
	return out, err
}

// Batch is one local batch.
type Batch struct {
	Step        int64
	GlobalBatch int64
	// Positions are the samples' global positions in the epoch stream; they
	// key per-sample randomness, so a sample gets the same noise on any worker.
	Positions []int64
	// Valid marks real samples; nil means all are real. Masked samples keep
	// their place but add nothing to the loss or the statistics.
	Valid []bool
	// Images (stage 1): len(Positions) × channels × image × image floats
	// (in [0,1], or CLIP-normalised for the EVA-CLIP encoder).
	Images []float32
	// Tokens and Targets (stage 2): len(Positions) × SeqLen ids; target -1 = no loss.
	Tokens  []int64
	Targets []int64
	SeqLen  int
	// Continuous image input (stage 2, lm.image_input "continuous"): the
	// tokenizer's frozen features [n, patches, width] and keep decisions
	// [n, patches], and the image slots [n, SeqLen] the merged features fill.
	ImageFeats []float32
	ImageKeep  []bool
	ImageSlots []bool
	// CutCaptions counts the rows whose caption was cut to fit SeqLen
	// (Stage2Builder; Go only, for the run's metrics).
	CutCaptions int
}

func (m *Model) checkBatch(b *Batch) error {
	n := len(b.Positions)
	if n == 0 {
		return errors.New("batch: no samples")
	}
	if b.GlobalBatch < int64(n) {
		return fmt.Errorf("batch: global batch %d is smaller than the local batch %d", b.GlobalBatch, n)
	}
	if b.Valid != nil && len(b.Valid) != n {
		return fmt.Errorf("batch: %d valid flags for %d samples", len(b.Valid), n)
	}
	switch m.info.Stage {
	case 1:
		want := n * int(m.info.Channels*m.info.Image*m.info.Image)
		if len(b.Images) != want {
			return fmt.Errorf("batch: %d image floats, want %d (%d samples × %d×%d×%d)", len(b.Images), want, n, m.info.Channels, m.info.Image, m.info.Image)
		}
	case 2:
		if b.SeqLen <= 0 || int64(b.SeqLen) > m.info.MaxLen {
			return fmt.Errorf("batch: sequence length %d out of range 1..%d", b.SeqLen, m.info.MaxLen)
		}
		if len(b.Tokens) != n*b.SeqLen || (b.Targets != nil && len(b.Targets) != n*b.SeqLen) {
			return fmt.Errorf("batch: %d tokens and %d targets, want %d each (%d × %d)", len(b.Tokens), len(b.Targets), n*b.SeqLen, n, b.SeqLen)
		}
		if b.ImageSlots != nil {
			if m.info.ImageInput != "continuous" {
				return errors.New("batch: image inputs for a model with discrete image input")
			}
			if len(b.ImageSlots) != n*b.SeqLen || len(b.ImageKeep) != n*int(m.info.VisPatches) ||
				len(b.ImageFeats) != n*int(m.info.VisPatches*m.info.VisWidth) {
				return fmt.Errorf("batch: image inputs have %d slots, %d keep flags, %d feature floats; want %d, %d, %d",
					len(b.ImageSlots), len(b.ImageKeep), len(b.ImageFeats), n*b.SeqLen, n*int(m.info.VisPatches), n*int(m.info.VisPatches*m.info.VisWidth))
			}
		}
	}
	return nil
}

// cBatch builds the C batch struct; the pinner keeps the Go memory it points
// to in place for the call.
func cBatch(b *Batch, p *runtime.Pinner) *C.lavit_batch {
	cb := &C.lavit_batch{
		batch:        C.int64_t(len(b.Positions)),
		global_batch: C.int64_t(b.GlobalBatch),
		step:         C.int64_t(b.Step),
		seq_len:      C.int64_t(b.SeqLen),
	}
	p.Pin(&b.Positions[0])
	cb.positions = (*C.int64_t)(unsafe.Pointer(&b.Positions[0]))
	if b.Valid != nil {
		v := bytesOf(b.Valid)
		p.Pin(&v[0])
		cb.valid = (*C.uint8_t)(unsafe.Pointer(&v[0]))
	}
	if len(b.Images) > 0 {
		p.Pin(&b.Images[0])
		cb.images = (*C.float)(unsafe.Pointer(&b.Images[0]))
	}
	if len(b.Tokens) > 0 {
		p.Pin(&b.Tokens[0])
		cb.tokens = (*C.int64_t)(unsafe.Pointer(&b.Tokens[0]))
	}
	if len(b.Targets) > 0 {
		p.Pin(&b.Targets[0])
		cb.targets = (*C.int64_t)(unsafe.Pointer(&b.Targets[0]))
	}
	if len(b.ImageSlots) > 0 {
		keep, slots := bytesOf(b.ImageKeep), bytesOf(b.ImageSlots)
		p.Pin(&b.ImageFeats[0])
		p.Pin(&keep[0])
		p.Pin(&slots[0])
		cb.image_feats = (*C.float)(unsafe.Pointer(&b.ImageFeats[0]))
		cb.image_keep = (*C.uint8_t)(unsafe.Pointer(&keep[0]))
		cb.image_slots = (*C.uint8_t)(unsafe.Pointer(&slots[0]))
	}
	p.Pin(cb)
	return cb
}

// bytesOf turns flags into the 0/1 bytes the C ABI takes.
func bytesOf(flags []bool) []uint8 {
	out := make([]uint8, len(flags))
	for i, ok := range flags {
		if ok {
			out[i] = 1
		}
	}
	return out
}

func floatPtr(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&s[0]))
}

// StepBegin runs the forward pass up to the batch statistics and returns
// this rank's partial sums (to be all-reduced by sum). The slice is reused
// by the next step.
func (m *Model) StepBegin(b *Batch) ([]float32, error) {
	if err := m.checkBatch(b); err != nil {
		return nil, err
	}
	if len(m.preBuf) < int(max(m.info.PreStats, 1)) {
		m.preBuf = make([]float32, max(m.info.PreStats, 1))
	}
	pre := m.preBuf
	err := withThread(func() error {
		var p runtime.Pinner
		defer p.Unpin()
		if C.c_step_begin(&m.lib.api, m.m, cBatch(b, &p), floatPtr(pre)) != 0 {
			return m.lib.lastError("step begin")
		}
		return nil
	})
	return pre[:m.info.PreStats], err
}

// StepFinish finishes the forward pass with the globally reduced statistics
// and runs backward into the flat gradient buffer. It returns this rank's
// partial post-step statistics (VQ sums and counts; reused by the next
// step) and its loss sum.
func (m *Model) StepFinish(globalPre []float32) (post []float32, lossSum float64, err error) {
	if int64(len(globalPre)) != m.info.PreStats {
		return nil, 0, fmt.Errorf("step finish: %d pre-stats, want %d", len(globalPre), m.info.PreStats)
	}
	if len(m.postBuf) < int(max(m.info.PostStats, 1)) {
		m.postBuf = make([]float32, max(m.info.PostStats, 1))
	}
	post = m.postBuf
	var loss C.double
	err = withThread(func() error {
		if C.c_step_finish(&m.lib.api, m.m, floatPtr(globalPre), floatPtr(post), &loss) != 0 {
			return m.lib.lastError("step finish")
		}
		return nil
	})
	return post[:m.info.PostStats], float64(loss), err
}

// ApplyGrads applies the optimizer step after the gradient buffer and the
// post-stats have been all-reduced: gradients are divided by the global
// batch, clipped, and AdamW updates the trainable groups.
func (m *Model) ApplyGrads(globalBatch int64, globalPost []float32) error {
	return m.applyGrads(globalBatch, globalPost, -1)
}

// applyGrads is ApplyGrads with the global gradient sum of squares (under
// ZeRO-2, where no rank holds all the summed gradients), or negative to
// let the shim compute it from the whole buffer.
func (m *Model) applyGrads(globalBatch int64, globalPost []float32, gradSq float64) error {
	if int64(len(globalPost)) != m.info.PostStats {
		return fmt.Errorf("apply: %d post-stats, want %d", len(globalPost), m.info.PostStats)
	}
	return withThread(func() error {
		if C.c_step_apply(&m.lib.api, m.m, C.int64_t(globalBatch), floatPtr(globalPost), C.double(gradSq)) != 0 {
			return m.lib.lastError("apply gradients")
		}
		return nil
	})
}

// Metrics returns the last step's metrics.
func (m *Model) Metrics() (map[string]float64, error) {
	s := m.lib.takeString(C.c_last_metrics(&m.lib.api, m.m))
	out := map[string]float64{}
	return out, json.Unmarshal([]byte(s), &out)
}

// Reducer sums a host buffer across all ranks in place (a collective
// all-reduce).
type Reducer func(ctx context.Context, buf []float32) error

// DeviceReducer sums n float32s of device memory at ptr, on the model's
// device, across all ranks in place (NCCL).
type DeviceReducer func(ctx context.Context, ptr uintptr, n int) error

// PartReducer reduces buf, elements [off, off+len(buf)) of a whole buffer
// of total elements, with the bits a call on the whole buffer gives those
// elements (collective.PartReducer).
type PartReducer func(ctx context.Context, buf []float32, off, total int) error

// Reduce is how a step sums its buffers across the ranks.
type Reduce struct {
	// Host sums host buffers: the batch and post statistics always, the
	// gradients of a CPU model, and the gradients of a GPU model when
	// Device is nil (staged through pinned host memory).
	Host Reducer
	// Grads, when set, sums the gradient buffer on the host instead of
	// Host: a bf16 sum for a model whose GradsBF16 is true (Host sums
	// float32s). Device, Scatter and DeviceScatter only ever see the
	// gradients, so they must use the gradients' sum too.
	Grads Reducer
	// Device sums a GPU model's gradients where they are; nil when the
	// collective has no device path (the ring).
	Device DeviceReducer

	// Under ZeRO (SetShard): Scatter reduce-scatters a host buffer of
	// world equal blocks (rank r keeps the sum of block r; ZeRO-2's
	// gradients), Gather all-gathers one (rank r contributes block r: the
	// parameters after each rank updated its shard). DeviceScatter and
	// DeviceGather do the same in device memory (NCCL); nil without a
	// device path.
	Scatter       Reducer
	Gather        Reducer
	DeviceScatter DeviceReducer
	DeviceGather  DeviceReducer

	// GradsPart and ScatterPart, when set, are Grads and Scatter for one
	// gradient bucket (SetBuckets) with the bits of a call on the whole
	// buffer, so a step reduced bucket by bucket trains exactly what one
	// reduction after backward trains. Without GradsPart buckets use
	// Grads (the same sums, each element's perhaps in another order);
	// without ScatterPart a ZeRO-2 model reduces after backward.
	GradsPart   PartReducer
	ScatterPart PartReducer

	// Max and Words are the exact reductions of a bitwise step
	// (bitwise.go): the element-wise maximum (collective.Max), and the
	// sum of words as uint32s modulo 2^32 (collective.SumUint32).
	Max   Reducer
	Words Reducer
	// WordsScatter reduce-scatters words with collective.SumUint32 (a
	// bitwise step at ZeRO-2: rank r keeps block r's sums).
	WordsScatter Reducer
}

// LocalReducer is the reducer of a world of one: nothing to add.
func LocalReducer(context.Context, []float32) error { return nil }

// Local is the Reduce of a world of one.
var Local = Reduce{Host: LocalReducer, Scatter: LocalReducer, Gather: LocalReducer, Max: LocalReducer, Words: LocalReducer, WordsScatter: LocalReducer}

// StepResult is what one full step reports. Metrics (a JSON round trip)
// are fetched separately with Model.Metrics, when a caller logs them.
type StepResult struct {
	// LossSum is this rank's loss summed over its samples.
	LossSum float64
	// GlobalLossSum is the loss summed over every rank's samples (it rides
	// on the step's last all-reduce); divided by the global batch it is
	// the step's loss.
	GlobalLossSum float64
	// StageTime is what copying a GPU model's gradients (and, under ZeRO,
	// its parameters) to the host and back cost, when the collective ran
	// there (zero otherwise).
	StageTime time.Duration
}

// Step runs one full data-parallel step: begin, reduce the batch
// statistics, finish, reduce the gradients, reduce the post-statistics,
// apply. The last all-reduce also carries this rank's loss sum and ride:
// values the caller wants summed over the ranks at this step (the worker's
// checkpoint decision), summed in place, so they cost no collective call
// of their own. ride may be nil.
//
// With a micro-batch size (SetMicroBatch) the local batch runs as several
// forward/backward passes whose gradients, statistics and losses add up
// (forwardBackward); under ZeRO (SetShard) the gradients are
// reduce-scattered at stage 2 and each rank's updated shard of the
// parameters is all-gathered at stages 1 and 2 (zero.go).
func (m *Model) Step(ctx context.Context, b *Batch, red Reduce, ride []float32) (StepResult, error) {
	if m.bitwiseGroup > 0 {
		return m.stepBitwise(ctx, b, red, ride)
	}
	post, loss, err := m.forwardBackward(ctx, b, red)
	if err != nil {
		return StepResult{}, err
	}
	var staged time.Duration
	zero2 := m.info.Zero == 2 && m.info.World > 1
	switch {
	case m.overlapped: // reduced bucket by bucket during backward
	case zero2:
		staged, err = m.scatterGrads(ctx, red)
	default:
		staged, err = m.reduceGrads(ctx, red)
	}
	if err != nil {
		return StepResult{}, fmt.Errorf("reduce gradients: %w", err)
	}
	// [post statistics | loss | ZeRO-2: each rank's gradient sum of
	// squares as a float pair in its own slots | ride], one buffer reused
	// across steps. A slot has one non-zero addend, so its sum is exact.
	n, world := len(post), m.info.World
	m.tailBuf = append(append(m.tailBuf[:0], post...), float32(loss))
	if zero2 {
		hi, lo, err := m.shardGradSq()
		if err != nil {
			return StepResult{}, err
		}
		pairs := len(m.tailBuf)
		for range 2 * world {
			m.tailBuf = append(m.tailBuf, 0)
		}
		m.tailBuf[pairs+2*m.info.Rank], m.tailBuf[pairs+2*m.info.Rank+1] = hi, lo
	}
	rideAt := len(m.tailBuf)
	m.tailBuf = append(m.tailBuf, ride...)
	if err := red.Host(ctx, m.tailBuf); err != nil {
		return StepResult{}, fmt.Errorf("reduce codebook statistics: %w", err)
	}
	copy(post, m.tailBuf[:n])
	copy(ride, m.tailBuf[rideAt:])
	gradSq := -1.0
	if zero2 {
		// The sum in rank order: what the shim computes from the whole
		// buffer at zero 0 and 1 (lavit.h).
		gradSq = 0
		for r := range world {
			gradSq += float64(m.tailBuf[n+1+2*r]) + float64(m.tailBuf[n+2+2*r])
		}
	}
	if err := m.applyGrads(b.GlobalBatch, post, gradSq); err != nil {
		return StepResult{}, err
	}
	if m.info.Zero >= 1 && m.info.World > 1 {
		copied, err := m.gatherParams(ctx, red)
		staged += copied
		if err != nil {
			return StepResult{}, fmt.Errorf("all-gather parameters: %w", err)
		}
	}
	return StepResult{LossSum: loss, GlobalLossSum: float64(m.tailBuf[n]), StageTime: staged}, nil
}

// reduceGrads sums the flat gradient buffer across the ranks: in place on a
// CPU model; on a GPU model, on the device (red.Device) once libtorch's
// kernels have finished writing it, or else through the model's pinned
// host staging buffer with red.Host, returning what the copies cost.
//
// Ordering against libtorch's CUDA stream is by the host: Sync waits for
// every kernel queued on the device before the collective reads the buffer
// (NCCL runs on a stream of its own), and the collective's completion is
// awaited (NCCL's calls poll until done) before ApplyGrads queues the
// kernels that read the sums.
func (m *Model) reduceGrads(ctx context.Context, red Reduce) (time.Duration, error) {
	want := int(m.info.GradWords)
	host, err := m.gradReducer(red)
	if err != nil {
		return 0, err
	}
	if !m.onDevice() && !m.forceStaging {
		return 0, reduceWhole(ctx, host, m.Grads(), want)
	}
	if err := m.Sync(); err != nil {
		return 0, err
	}
	if red.Device != nil && !m.forceStaging {
		if want > 0 && m.GradsDevicePtr() == 0 {
			return 0, errors.New("the model's gradient buffer has no device address")
		}
		return 0, red.Device(ctx, m.GradsDevicePtr(), want)
	}
	return m.viaStaging(m.stageGrads, want, func(buf []float32) error {
		return reduceWhole(ctx, host, buf, want)
	})
}

// reduceWhole hands buf to reduce after checking that it is the whole
// gradient buffer: an empty or short one would let the replicas drift
// apart with no error.
func reduceWhole(ctx context.Context, reduce Reducer, buf []float32, want int) error {
	if len(buf) != want {
		return fmt.Errorf("the gradient buffer handed to the collective holds %d floats, the model has %d trainable: refusing to reduce part of it", len(buf), want)
	}
	return reduce(ctx, buf)
}

// onDevice reports whether the model lives on a GPU.
func (m *Model) onDevice() bool { return m.info.Device != "cpu" }

// Sync waits until every kernel queued on the model's device has finished
// (nothing to wait for on the CPU).
func (m *Model) Sync() error {
	return withThread(func() error {
		if C.c_sync(&m.lib.api, m.m) != 0 {
			return m.lib.lastError("sync")
		}
		return nil
	})
}

// gradStaging is the model's host copy of the gradient buffer (pinned
// memory for a GPU model), owned by the model: valid until Close.
func (m *Model) gradStaging() ([]float32, error) {
	var p *C.float
	err := withThread(func() error {
		if p = C.c_grad_staging(&m.lib.api, m.m); p == nil {
			return m.lib.lastError("gradient staging buffer")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(p)), int(max(m.info.GradWords, m.info.ParamWords))), nil
}

// stageGrads copies the gradients to the staging buffer (toHost) or back.
func (m *Model) stageGrads(toHost bool) error {
	return withThread(func() error {
		if C.c_grads_stage(&m.lib.api, m.m, cFlag(toHost)) != 0 {
			return m.lib.lastError("stage gradients")
		}
		return nil
	})
}

// EnableVQ switches stage 1 to phase B: k-means codebook init from these
// images' kept tokens, selector frozen.
func (m *Model) EnableVQ(images []float32, positions []int64, step int64) error {
	if err := m.checkImages(images, positions); err != nil {
		return err
	}
	err := withThread(func() error {
		if C.c_vq_enable(&m.lib.api, m.m, floatPtr(images), C.int64_t(len(positions)), (*C.int64_t)(unsafe.Pointer(&positions[0])), C.int64_t(step)) != 0 {
			return m.lib.lastError("enable VQ")
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.refreshInfo()
}

func (m *Model) checkImages(images []float32, positions []int64) error {
	if m.info.Stage != 1 {
		return errors.New("this needs a stage-1 model")
	}
	if len(positions) == 0 {
		return errors.New("no images")
	}
	want := len(positions) * int(m.info.Channels*m.info.Image*m.info.Image)
	if len(images) != want {
		return fmt.Errorf("%d image floats for %d images, want %d", len(images), len(positions), want)
	}
	return nil
}

// State returns the full training state (params, Adam moments, counters,
// codebook, phase) as bytes.
func (m *Model) State() ([]byte, error) {
	return m.takeBytes("save state", func(p **C.uint8_t, n *C.int64_t) C.int { return C.c_state_save(&m.lib.api, m.m, p, n) })
}

// StatePart is this rank's part of a blocked state (StateFormatBlocked):
// the header (rank 0) and block Rank of the flat buffers, float32
// parameters (a bf16 model's master weights) and Adam moments, with their
// checksums. The parts of every rank, concatenated in rank order, are one
// state that Load reads at any world size and ZeRO stage; a rank writes
// only what it holds, so a checkpoint needs no gather and no rank holds
// the whole state (BlockedLayout gives the parts' sizes).
func (m *Model) StatePart() ([]byte, error) {
	return m.takeBytes("save state part", func(p **C.uint8_t, n *C.int64_t) C.int { return C.c_state_part(&m.lib.api, m.m, p, n) })
}

// takeBytes runs a shim call that returns a malloc'd byte buffer, copies
// it into Go memory and frees it.
func (m *Model) takeBytes(what string, call func(**C.uint8_t, *C.int64_t) C.int) ([]byte, error) {
	var out []byte
	err := withThread(func() error {
		var p *C.uint8_t
		var n C.int64_t
		if call(&p, &n) != 0 {
			return m.lib.lastError(what)
		}
		defer C.c_free_bytes(&m.lib.api, p)
		out = cBytes(p, n)
		return nil
	})
	return out, err
}

// cBytes copies n bytes of C memory into a Go slice (C.GoBytes takes an
// int, too small for a large state).
func cBytes(p *C.uint8_t, n C.int64_t) []byte {
	out := make([]byte, int(n))
	copy(out, unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n)))
	return out
}

// Load restores a state from State. On error nothing changes.
func (m *Model) Load(state []byte) error {
	if len(state) == 0 {
		return errors.New("load state: empty")
	}
	err := withThread(func() error {
		if C.c_state_load(&m.lib.api, m.m, (*C.uint8_t)(unsafe.Pointer(&state[0])), C.int64_t(len(state))) != 0 {
			return m.lib.lastError("load state")
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.refreshInfo()
}

// Stage1Eval holds per-patch evaluation outputs, row-major [n, patches].
type Stage1Eval struct {
	N, Patches, Width int
	CosLoss           []float32 // 1 − cos(reconstruction, frozen feature)
	KeepProb          []float32
	Keep              []bool
	Codes             []int64   // -1 without VQ
	Features          []float32 // [n, patches, width], if asked for
}

// EvalStage1 evaluates a stage-1 model on images.
func (m *Model) EvalStage1(images []float32, positions []int64, step int64, withFeatures bool) (*Stage1Eval, error) {
	return m.evalStage1(images, positions, step, true, withFeatures)
}

// Features returns the tokenizer's view of images without reconstructing
// them: frozen features, keep decisions and probabilities, codes. It is
// what the continuous image→text path feeds the LM every step.
func (m *Model) Features(images []float32, positions []int64, step int64) (*Stage1Eval, error) {
	return m.evalStage1(images, positions, step, false, true)
}

func (m *Model) evalStage1(images []float32, positions []int64, step int64, withRecon, withFeatures bool) (*Stage1Eval, error) {
	if err := m.checkImages(images, positions); err != nil {
		return nil, err
	}
	n, np := len(positions), int(m.info.Patches)
	e := &Stage1Eval{N: n, Patches: np, Width: int(m.info.Width),
		KeepProb: make([]float32, n*np), Keep: make([]bool, n*np), Codes: make([]int64, n*np)}
	keep := make([]uint8, n*np)
	var cos, feats *C.float
	if withRecon {
		e.CosLoss = make([]float32, n*np)
		cos = floatPtr(e.CosLoss)
	}
	if withFeatures {
		e.Features = make([]float32, n*np*e.Width)
		feats = floatPtr(e.Features)
	}
	err := withThread(func() error {
		if C.c_eval_stage1(&m.lib.api, m.m, floatPtr(images), C.int64_t(n), (*C.int64_t)(unsafe.Pointer(&positions[0])), C.int64_t(step),
			cos, floatPtr(e.KeepProb), (*C.uint8_t)(unsafe.Pointer(&keep[0])), (*C.int64_t)(unsafe.Pointer(&e.Codes[0])), feats) != 0 {
			return m.lib.lastError("evaluate stage 1")
		}
		return nil
	})
	for i, k := range keep {
		e.Keep[i] = k != 0
	}
	return e, err
}

// KeptCodes returns each image's code ids of its kept patches in raster
// order: what Tokenize returns for the same images, step and positions.
func (e *Stage1Eval) KeptCodes() ([][]int64, error) {
	out := make([][]int64, e.N)
	for i := range out {
		for p := 0; p < e.Patches; p++ {
			if !e.Keep[i*e.Patches+p] {
				continue
			}
			c := e.Codes[i*e.Patches+p]
			if c < 0 {
				return nil, errors.New("kept codes need a trained tokenizer with VQ on (phase B)")
			}
			out[i] = append(out[i], c)
		}
	}
	return out, nil
}

// Tokenize returns each image's visual code ids (kept patches, raster order).
func (m *Model) Tokenize(images []float32, positions []int64, step int64) ([][]int64, error) {
	if err := m.checkImages(images, positions); err != nil {
		return nil, err
	}
	n, np := len(positions), int(m.info.Patches)
	ids, counts := make([]int64, n*np), make([]int64, n)
	err := withThread(func() error {
		if C.c_tokenize(&m.lib.api, m.m, floatPtr(images), C.int64_t(n), (*C.int64_t)(unsafe.Pointer(&positions[0])), C.int64_t(step),
			(*C.int64_t)(unsafe.Pointer(&ids[0])), (*C.int64_t)(unsafe.Pointer(&counts[0]))) != 0 {
			return m.lib.lastError("tokenize")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([][]int64, n)
	for i := range out {
		out[i] = append([]int64(nil), ids[i*np:i*np+int(counts[i])]...)
	}
	return out, nil
}

// LMLogProbs returns log-probabilities [n, SeqLen, vocab] for a batch's
// tokens (and image inputs); targets are not needed.
func (m *Model) LMLogProbs(b *Batch) ([]float32, error) {
	if m.info.Stage != 2 {
		return nil, errors.New("log-probs need a stage-2 model")
	}
	if b.GlobalBatch == 0 {
		b.GlobalBatch = int64(len(b.Positions))
	}
	if err := m.checkBatch(b); err != nil {
		return nil, err
	}
	out := make([]float32, len(b.Positions)*b.SeqLen*int(m.info.Vocab))
	err := withThread(func() error {
		var p runtime.Pinner
		defer p.Unpin()
		if C.c_lm_logprobs(&m.lib.api, m.m, cBatch(b, &p), floatPtr(out)) != 0 {
			return m.lib.lastError("LM log-probs")
		}
		return nil
	})
	return out, err
}

// BenchSteps runs n full steps in C++ (no Go in the loop) and returns the
// mean milliseconds per step.
func (m *Model) BenchSteps(b *Batch, n int) (float64, error) {
	if err := m.checkBatch(b); err != nil {
		return 0, err
	}
	var ms C.double
	err := withThread(func() error {
		var p runtime.Pinner
		defer p.Unpin()
		if C.c_bench_steps(&m.lib.api, m.m, cBatch(b, &p), C.int64_t(n), &ms) != 0 {
			return m.lib.lastError("bench steps")
		}
		return nil
	})
	return float64(ms), err
}

// gradReducer is the host reducer of the gradient buffer: red.Grads, else
// red.Host, which sums float32s and so is refused for bf16 gradients.
func (m *Model) gradReducer(red Reduce) (Reducer, error) {
	if red.Grads != nil {
		return red.Grads, nil
	}
	if m.GradsBF16() {
		return nil, errors.New("the gradients are bf16 (collective.reduce_dtype bf16) but the reduction has no bf16 sum (Reduce.Grads)")
	}
	return red.Host, nil
}
