/*
 * lavit.h: the plain C ABI of the lavit libtorch shim.
 *
 * Rules: every function catches every C++ exception; a failure returns a
 * negative int (or NULL) and leaves a message for lavit_last_error() on the
 * calling thread. No C++ type crosses this boundary. Bump LAVIT_ABI_VERSION
 * whenever a signature or struct here changes; the Go side refuses a shim
 * with another version.
 */
#ifndef LAVIT_H
#define LAVIT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LAVIT_ABI_VERSION 6

/* The layout version written into every state blob (lavit_state_save). It
 * is not the ABI version: adding a function changes the ABI but not the
 * states, and a checkpoint must stay readable across such a change. Bump it
 * only when the state layout changes. */
#define LAVIT_STATE_FORMAT 1
/* The layout version of a blocked state (lavit_state_part): the state of a
 * checkpoint written shard by shard. */
#define LAVIT_STATE_FORMAT_BLOCKED 2

typedef struct lavit_model lavit_model;

/* One local batch. Stage 1 uses images; stage 2 uses tokens and targets. */
typedef struct {
  int64_t batch;             /* local samples in this call */
  int64_t global_batch;      /* samples in the global batch (the divisor) */
  int64_t step;              /* global step: keys randomness and the schedule */
  const int64_t* positions;  /* [batch] global sample positions: key per-sample randomness */
  const uint8_t* valid;      /* [batch] 1 = real sample, 0 = masked (bad) sample; NULL = all real */
  const float* images;       /* stage 1: [batch, 3, H, W] in [0,1], CPU memory */
  const int64_t* tokens;     /* stage 2: [batch, seq_len] input ids */
  const int64_t* targets;    /* stage 2: [batch, seq_len] target ids, -1 = no loss */
  int64_t seq_len;
  /* Stage 2 with continuous image input (else NULL): the frozen features
   * [batch, patches, width] and keep decisions [batch, patches] from the
   * stage-1 tokenizer, and the image slots [batch, seq_len] (1 = this position
   * takes the next kept token's merged feature). */
  const float* image_feats;
  const uint8_t* image_keep;
  const uint8_t* image_slots;
} lavit_batch;

int lavit_abi_version(void);
/* Thread-local message of the last failure on this thread. */
const char* lavit_last_error(void);
/* JSON: torch version, cuda availability, threads, ABI, whether
 * deterministic algorithms are on. Caller frees with lavit_free_string. */
char* lavit_build_info(void);
void lavit_free_string(char* s);
/* Sets intra-op threads (libtorch) for the process. */
int lavit_set_threads(int n);
/* Deterministic algorithms (ABI 6), for the process: on = 1 makes libtorch
 * use deterministic kernels only (an op without one is an error), cuDNN
 * deterministic and not benchmarking, and sets CUBLAS_WORKSPACE_CONFIG to
 * ":4096:8" unless already set (cuBLAS's condition for reproducible
 * results; call before the first CUDA matmul). Bitwise-reproducible runs
 * turn it on. */
int lavit_set_deterministic(int on);

/* Creates a model from a JSON config on a device ("cpu", "cuda:0") with a seed. */
lavit_model* lavit_model_create(const char* config_json, const char* device, uint64_t seed);
void lavit_model_free(lavit_model* m);

/* JSON describing the model: stage, parameter list (name, shape, offset,
 * group), counts, buffer sizes. Free with lavit_free_string. */
char* lavit_model_info(lavit_model* m);

/* The flat gradient buffer: every trainable parameter's .grad is a view into
 * it (in bf16 with float32 reduction, lavit_grad_data is the float32 buffer
 * those gradients are accumulated into: see lavit_set_precision). On the
 * model's device (device pointer on CUDA); lavit_grad_numel is its length
 * in float32 words. */
int64_t lavit_grad_numel(lavit_model* m);
void* lavit_grad_data(lavit_model* m);
/* The flat parameter buffer (same layout as the gradients). */
void* lavit_param_data(lavit_model* m);
/* Copies parameter `index`'s own .grad tensor (as autograd sees it) to out
 * (CPU floats, numel of that parameter): lets tests check that every .grad
 * is a view into the flat buffer. */
int lavit_param_grad(lavit_model* m, int64_t index, float* out);

/* The gradient hand-off to a collective (ABI 2).
 * lavit_sync waits until every kernel queued on the model's device has
 * finished (a no-op on the CPU): a collective that reads the gradient buffer
 * on a stream of its own (NCCL) may start once it returns, and libtorch's
 * next kernels are queued only after the collective has completed.
 * lavit_grad_staging returns a host buffer of float32 words (room for the
 * gradient buffer and, in bf16, the parameters: max of "grad_words" and
 * "param_words" in lavit_model_info) owned
 * by the model (pinned memory when the model is on a GPU), for collectives
 * that run on the host (the ring); lavit_grads_stage copies the gradients
 * into it (to_host = 1) or back from it (to_host = 0), synchronously. */
int lavit_sync(lavit_model* m);
float* lavit_grad_staging(lavit_model* m);
int lavit_grads_stage(lavit_model* m, int to_host);

/* Sharding (ABI 3): ZeRO over a data-parallel world.
 * lavit_set_shard makes the model rank `rank` of `world` at ZeRO stage
 * `zero` (0: every rank keeps the whole optimizer state; 1: each rank keeps
 * the fp32 master weights and Adam moments of one shard, updates it and the
 * caller all-gathers the parameters; 2: also the gradients are
 * reduce-scattered, not all-reduced). The flat buffers are padded to
 * world * ceil(P / world) floats (lavit_grad_numel), shard r being block r;
 * the padding is never trained. Call it on a fresh model, before
 * its first step or before loading a state (states are the same at every
 * world size and stage).
 * At every stage the flat buffers are world blocks of ceil(P / world)
 * floats, so the collectives and the clipping norm cut them the same way
 * and ZeRO-1 and 2 train the same bits as zero 0 at that world size.
 * lavit_grad_sq: the sum of squares of the trainable gradients in this
 * rank's block (zero 2: after the reduce-scatter), as a float pair (hi +
 * lo, in double, is the sum); lavit_step_apply's grad_sq is the sum over
 * ranks, in rank order, of double(hi) + double(lo).
 * lavit_params_stage: like lavit_grads_stage for the parameters (the
 * all-gather of a GPU model on a host collective), same staging buffer.
 * lavit_optim_gather: before lavit_state_save at zero >= 1 with world > 1:
 * a host buffer of k flat float32 tensors of the flat buffers' length
 * (k = "gather_parts" in lavit_model_info: exp_avg then exp_avg_sq; in
 * bf16 the master weights first) holding this rank's shard in block
 * `rank` of each; the caller all-gathers each, then lavit_state_save reads
 * (and frees) it. */
int lavit_set_shard(lavit_model* m, int64_t rank, int64_t world, int zero);
/* Activation checkpointing (ABI 3): on = 1 keeps only each transformer
 * block's inputs during the forward pass of a training step and recomputes
 * the block in backward (stage 1: merger and decoder blocks; stage 2:
 * every LM block and the continuous input's merger blocks). Same
 * gradients, less memory, about one more forward pass of compute. */
int lavit_set_checkpointing(lavit_model* m, int on);
/* Precision (ABI 4): bf16 = 1 makes the model train in bfloat16: the
 * parameters (and the frozen weights) and the activations are bf16, the
 * losses and the stage-1 codebook float32, and the optimizer keeps float32
 * master weights (of its shard under ZeRO) and moments. The gradients are
 * accumulated in float32 and reduced in float32 (lavit_grad_data is then a
 * float32 buffer apart from the bf16 .grad buffer), or with reduce_bf16 =
 * 1 reduced as bf16: lavit_grad_data is the bf16 .grad buffer itself, two
 * values per float32 word, to be summed with a bf16 sum. In bf16 the flat
 * buffers' blocks are rounded up to an even number of values, so every
 * block is whole float32 words; lavit_grad_numel and the "grad_words" and
 * "param_words" of lavit_model_info are lengths in float32 words. States
 * stay float32 (the master weights): a bf16 and a float32 model load each
 * other's states. Call it on a fresh model, like lavit_set_shard (in either
 * order). */
int lavit_set_precision(lavit_model* m, int bf16, int reduce_bf16);
/* Gradient buckets (ABI 4): overlapping the gradient reduction with
 * backward. lavit_set_buckets (fresh model; 0 = off) cuts the gradient
 * buffer (lavit_grad_data) into contiguous buckets of about `bytes`, the
 * last parameters' first (backward writes those first); their ranges in
 * float32 words are "buckets" in lavit_model_info, [[word offset, words],
 * ...] in the order they become ready. lavit_arm_buckets arms them for
 * the next lavit_step_finish (the step's last micro-batch): a bucket is
 * ready once every parameter in it has its gradient, or when that
 * backward ends (a parameter without a gradient this step). While that
 * lavit_step_finish runs, another thread calls lavit_wait_bucket(k) for
 * k = 0, 1, ... in order; it returns 0 once bucket k's gradients are final
 * in the buffer (and may be reduced in place; backward writes only other
 * buckets from then on), or -1 if the backward failed. */
int lavit_set_buckets(lavit_model* m, int64_t bytes);
int lavit_arm_buckets(lavit_model* m);
int lavit_wait_bucket(lavit_model* m, int64_t k);
int lavit_grad_sq(lavit_model* m, float* hi, float* lo);
int lavit_params_stage(lavit_model* m, int to_host);
float* lavit_optim_gather(lavit_model* m);

/* Batch statistics exchanged between workers (sum all-reduce):
 * pre-stats after step_begin (stage 1: keep sum, patch count),
 * post-stats after step_finish (stage 1 with VQ on: per-code sums and counts). */
int64_t lavit_pre_stats_numel(lavit_model* m);
int64_t lavit_post_stats_numel(lavit_model* m);

/* A training step, split around the reductions:
 *   step_begin  forward up to the batch statistics; writes pre_stats (local partial sums)
 *   [worker all-reduces pre_stats]
 *   step_finish finishes forward with the global pre_stats, backward into the flat
 *               gradient buffer; writes post_stats; returns the local
 *               loss sum; metrics as JSON via lavit_last_metrics
 *   [worker all-reduces the gradient buffer and post_stats]
 *   step_apply  divides the gradients by global_batch, clips, AdamW with the schedule
 *               and per-group learning rates (frozen groups untouched), and the VQ EMA
 *               update from the global post_stats.
 * Gradient accumulation: step_begin may be called for several micro-batches
 * of one step before their step_finish calls (in the same order); the first
 * step_finish after an apply zeroes the gradient buffer, the others add to
 * it, and each returns its own post_stats and loss sum (the caller sums
 * them). step_apply's grad_sq is the global sum of squares of the summed
 * gradients (from lavit_grad_sq, see above), or negative to compute it
 * here from the whole buffer (zero 0 and 1), the same way. */
int lavit_step_begin(lavit_model* m, const lavit_batch* b, float* pre_stats);
int lavit_step_finish(lavit_model* m, const float* global_pre_stats, float* post_stats, double* local_loss_sum);
int lavit_step_apply(lavit_model* m, int64_t global_batch, const float* global_post_stats, double grad_sq);
/* Metrics of the last step_finish as JSON (name -> number). Free with lavit_free_string. */
char* lavit_last_metrics(lavit_model* m);

/* Stage 1: switch vector quantisation on (phase B): k-means-initialise the codebook
 * from the kept task-layer outputs of these images (every rank passes the same
 * images, so every rank computes the same codebook), then freeze the selector. */
int lavit_vq_enable(lavit_model* m, const float* images, int64_t n, const int64_t* positions, int64_t step);

/* Loads parameters from a safetensors file (F32, F16 or BF16). mapping_json is
 * NULL, or a JSON object {model name: file name} for renaming. Every
 * parameter of the model whose name starts with `prefix` ("" = all) must be in
 * the file with the model's shape; otherwise nothing is loaded and the error
 * names the tensor. */
int lavit_load_safetensors(lavit_model* m, const char* path, const char* prefix, const char* mapping_json);

/* Full state (params, Adam moments, step counters, codebook, phase flags) as bytes.
 * lavit_state_save returns a malloc'd buffer (free with lavit_free_bytes). */
int lavit_state_save(lavit_model* m, uint8_t** out, int64_t* out_len);
void lavit_free_bytes(uint8_t* p);
/* Loads a state (a whole one, LAVIT_STATE_FORMAT, or a blocked one,
 * LAVIT_STATE_FORMAT_BLOCKED, written at any world size and ZeRO stage);
 * on any error nothing is changed. */
int lavit_state_load(lavit_model* m, const uint8_t* data, int64_t len);
/* This rank's part of a blocked state (ABI 4): the header (rank 0) and
 * block `rank` of the flat buffers' `world` blocks (lavit_set_shard), its
 * float32 parameters (a bf16 model's master weights) and Adam moments,
 * each part with its own CRC-32C. The ranks' parts, concatenated in rank
 * order, are one blocked state; a rank writes only what it holds (no
 * gather). Free with lavit_free_bytes. The layout is in shim.cpp
 * ("blocked states") and checkpoint/state.go. */
int lavit_state_part(lavit_model* m, uint8_t** out, int64_t* out_len);

/* Stage 1 evaluation, per patch: reconstruction cosine loss, keep probability,
 * sampled keep decision, code id (-1 without VQ), and (if features != NULL) the
 * frozen encoder features [n, N, D]. Sampling is keyed by (seed, step, position).
 * Any output may be NULL; with cos_loss NULL the decoder does not run. */
int lavit_eval_stage1(lavit_model* m, const float* images, int64_t n, const int64_t* positions, int64_t step,
                      float* cos_loss, float* keep_prob, uint8_t* keep, int64_t* codes, float* features);

/* Stage 1 tokenize: code ids of the kept patches in raster order. ids is [n, N];
 * counts[i] is how many ids image i has (the rest are -1). */
int lavit_tokenize(lavit_model* m, const float* images, int64_t n, const int64_t* positions, int64_t step,
                   int64_t* ids, int64_t* counts);

/* Stage 2 evaluation: log-probabilities [batch, seq_len, vocab] for the
 * batch's tokens (and image inputs; targets are ignored). */
int lavit_lm_logprobs(lavit_model* m, const lavit_batch* b, float* out);

/* C++-side timing loop: runs n full steps (begin, finish, apply; no reduction)
 * on the same batch, and returns the mean milliseconds per step. */
int lavit_bench_steps(lavit_model* m, const lavit_batch* b, int64_t n, double* ms_per_step);

/* The same loop under libtorch's profiler: one step unprofiled (lazy
 * initialisation), then n steps whose operators are written to trace_path
 * as a Chrome trace (JSON events with name, ts, dur in microseconds, tid). */
int lavit_profile_steps(lavit_model* m, const lavit_batch* b, int64_t n, const char* trace_path);

#ifdef __cplusplus
}
#endif
#endif
