// shim_loader.c: see shim_loader.h.
#include <dlfcn.h>
#include <malloc.h>
#include "shim_loader.h"
#define LOAD(name) api->name = dlsym(h, "lavit_" #name); if (!api->name) { *missing = "lavit_" #name; dlclose(h); return -2; }

int shim_load(const char* path, lavit_api* api, const char** missing) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) { *missing = dlerror(); return -1; }
	api->handle = h;
	LOAD(abi_version) LOAD(last_error) LOAD(build_info) LOAD(free_string) LOAD(set_threads) LOAD(set_deterministic)
	LOAD(model_create) LOAD(model_free) LOAD(model_info) LOAD(grad_numel) LOAD(grad_data) LOAD(param_data) LOAD(param_grad)
	LOAD(sync) LOAD(grad_staging) LOAD(grads_stage)
	LOAD(pre_stats_numel) LOAD(post_stats_numel) LOAD(step_begin) LOAD(step_finish) LOAD(step_apply)
	LOAD(set_shard) LOAD(set_precision) LOAD(set_buckets) LOAD(arm_buckets) LOAD(wait_bucket) LOAD(set_checkpointing) LOAD(grad_sq) LOAD(params_stage) LOAD(optim_gather)
	LOAD(last_metrics) LOAD(vq_enable) LOAD(load_safetensors) LOAD(state_save) LOAD(free_bytes) LOAD(state_load) LOAD(state_part) LOAD(eval_stage1)
	LOAD(tokenize) LOAD(lm_logprobs) LOAD(bench_steps) LOAD(profile_steps)
	return 0;
}

// Trampolines: cgo cannot call C function pointers directly.
int c_abi_version(lavit_api* a) { return a->abi_version(); }
const char* c_last_error(lavit_api* a) { return a->last_error(); }
char* c_build_info(lavit_api* a) { return a->build_info(); }
void c_free_string(lavit_api* a, char* s) { a->free_string(s); }
int c_set_threads(lavit_api* a, int n) { return a->set_threads(n); }
int c_set_deterministic(lavit_api* a, int on) { return a->set_deterministic(on); }
lavit_model* c_model_create(lavit_api* a, const char* cfg, const char* dev, uint64_t seed) { return a->model_create(cfg, dev, seed); }
void c_model_free(lavit_api* a, lavit_model* m) { a->model_free(m); }
char* c_model_info(lavit_api* a, lavit_model* m) { return a->model_info(m); }
int64_t c_grad_numel(lavit_api* a, lavit_model* m) { return a->grad_numel(m); }
void* c_grad_data(lavit_api* a, lavit_model* m) { return a->grad_data(m); }
void* c_param_data(lavit_api* a, lavit_model* m) { return a->param_data(m); }
int c_param_grad(lavit_api* a, lavit_model* m, int64_t i, float* out) { return a->param_grad(m, i, out); }
int c_sync(lavit_api* a, lavit_model* m) { return a->sync(m); }
float* c_grad_staging(lavit_api* a, lavit_model* m) { return a->grad_staging(m); }
int c_grads_stage(lavit_api* a, lavit_model* m, int to_host) { return a->grads_stage(m, to_host); }
int64_t c_pre_stats_numel(lavit_api* a, lavit_model* m) { return a->pre_stats_numel(m); }
int64_t c_post_stats_numel(lavit_api* a, lavit_model* m) { return a->post_stats_numel(m); }
int c_step_begin(lavit_api* a, lavit_model* m, const lavit_batch* b, float* pre) { return a->step_begin(m, b, pre); }
int c_step_finish(lavit_api* a, lavit_model* m, const float* gpre, float* post, double* loss) { return a->step_finish(m, gpre, post, loss); }
int c_step_apply(lavit_api* a, lavit_model* m, int64_t gb, const float* gpost, double grad_sq) { return a->step_apply(m, gb, gpost, grad_sq); }
int c_set_shard(lavit_api* a, lavit_model* m, int64_t rank, int64_t world, int zero) { return a->set_shard(m, rank, world, zero); }
int c_set_checkpointing(lavit_api* a, lavit_model* m, int on) { return a->set_checkpointing(m, on); }
int c_set_precision(lavit_api* a, lavit_model* m, int bf16, int reduce_bf16) { return a->set_precision(m, bf16, reduce_bf16); }
int c_set_buckets(lavit_api* a, lavit_model* m, int64_t bytes) { return a->set_buckets(m, bytes); }
int c_arm_buckets(lavit_api* a, lavit_model* m) { return a->arm_buckets(m); }
int c_wait_bucket(lavit_api* a, lavit_model* m, int64_t k) { return a->wait_bucket(m, k); }
int c_grad_sq(lavit_api* a, lavit_model* m, float* hi, float* lo) { return a->grad_sq(m, hi, lo); }
int c_params_stage(lavit_api* a, lavit_model* m, int to_host) { return a->params_stage(m, to_host); }
float* c_optim_gather(lavit_api* a, lavit_model* m) { return a->optim_gather(m); }
char* c_last_metrics(lavit_api* a, lavit_model* m) { return a->last_metrics(m); }
int c_vq_enable(lavit_api* a, lavit_model* m, const float* im, int64_t n, const int64_t* pos, int64_t step) { return a->vq_enable(m, im, n, pos, step); }
int c_load_safetensors(lavit_api* a, lavit_model* m, const char* path, const char* prefix, const char* mapping) { return a->load_safetensors(m, path, prefix, mapping); }
int c_state_save(lavit_api* a, lavit_model* m, uint8_t** out, int64_t* len) { return a->state_save(m, out, len); }
int c_state_part(lavit_api* a, lavit_model* m, uint8_t** out, int64_t* len) { return a->state_part(m, out, len); }
void c_free_bytes(lavit_api* a, uint8_t* p) { a->free_bytes(p); }
int c_state_load(lavit_api* a, lavit_model* m, const uint8_t* d, int64_t n) { return a->state_load(m, d, n); }
int c_eval_stage1(lavit_api* a, lavit_model* m, const float* im, int64_t n, const int64_t* pos, int64_t step, float* cl, float* kp, uint8_t* k, int64_t* codes, float* feats) { return a->eval_stage1(m, im, n, pos, step, cl, kp, k, codes, feats); }
int c_tokenize(lavit_api* a, lavit_model* m, const float* im, int64_t n, const int64_t* pos, int64_t step, int64_t* ids, int64_t* counts) { return a->tokenize(m, im, n, pos, step, ids, counts); }
int c_lm_logprobs(lavit_api* a, lavit_model* m, const lavit_batch* b, float* out) { return a->lm_logprobs(m, b, out); }
int c_bench_steps(lavit_api* a, lavit_model* m, const lavit_batch* b, int64_t n, double* ms) { return a->bench_steps(m, b, n, ms); }
int c_profile_steps(lavit_api* a, lavit_model* m, const lavit_batch* b, int64_t n, const char* path) { return a->profile_steps(m, b, n, path); }
void c_tune_malloc(void) { mallopt(M_MMAP_THRESHOLD, 32 << 20); mallopt(M_TRIM_THRESHOLD, 256 << 20); }
void c_trim_heap(void) { malloc_trim(0); }
