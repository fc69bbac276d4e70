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

#define LAVIT_ABI_VERSION 2

/* The layout version written into every state blob (lavit_state_save). It
 * is not the ABI version: adding a function changes the ABI but not the
 * states, and a checkpoint must stay readable across such a change. Bump it
 * only when the state layout changes. */
#define LAVIT_STATE_FORMAT 1

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
/* JSON: torch version, cuda availability, threads. Caller frees with lavit_free_string. */
char* lavit_build_info(void);
void lavit_free_string(char* s);
/* Sets intra-op threads (libtorch) for the process. */
int lavit_set_threads(int n);

/* Creates a model from a JSON config on a device ("cpu", "cuda:0") with a seed. */
lavit_model* lavit_model_create(const char* config_json, const char* device, uint64_t seed);
void lavit_model_free(lavit_model* m);

/* JSON describing the model: stage, parameter list (name, shape, offset,
 * group), counts, buffer sizes. Free with lavit_free_string. */
char* lavit_model_info(lavit_model* m);

/* The flat gradient buffer: every trainable parameter's .grad is a view into
 * it. float32, on the model's device (device pointer on CUDA). */
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
 * lavit_grad_staging returns a host buffer of lavit_grad_numel floats owned
 * by the model (pinned memory when the model is on a GPU), for collectives
 * that run on the host (the ring); lavit_grads_stage copies the gradients
 * into it (to_host = 1) or back from it (to_host = 0), synchronously. */
int lavit_sync(lavit_model* m);
float* lavit_grad_staging(lavit_model* m);
int lavit_grads_stage(lavit_model* m, int to_host);

/* Batch statistics exchanged between workers (sum all-reduce):
 * pre-stats after step_begin (stage 1: keep sum, patch count),
 * post-stats after step_finish (stage 1 with VQ on: per-code sums and counts). */
int64_t lavit_pre_stats_numel(lavit_model* m);
int64_t lavit_post_stats_numel(lavit_model* m);

/* A training step, split around the reductions:
 *   step_begin  forward up to the batch statistics; writes pre_stats (local partial sums)
 *   [worker all-reduces pre_stats]
 *   step_finish finishes forward with the global pre_stats, backward into the flat
 *               gradient buffer (zeroed first); writes post_stats; returns the local
 *               loss sum; metrics as JSON via lavit_last_metrics
 *   [worker all-reduces the gradient buffer and post_stats]
 *   step_apply  divides the gradients by global_batch, clips, AdamW with the schedule
 *               and per-group learning rates (frozen groups untouched), and the VQ EMA
 *               update from the global post_stats. */
int lavit_step_begin(lavit_model* m, const lavit_batch* b, float* pre_stats);
int lavit_step_finish(lavit_model* m, const float* global_pre_stats, float* post_stats, double* local_loss_sum);
int lavit_step_apply(lavit_model* m, int64_t global_batch, const float* global_post_stats);
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
/* Loads a state; on any error nothing is changed. */
int lavit_state_load(lavit_model* m, const uint8_t* data, int64_t len);

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

#ifdef __cplusplus
}
#endif
#endif
