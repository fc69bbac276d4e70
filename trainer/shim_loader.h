// shim_loader.h: loads the lavit shim with dlopen and calls it through
// function pointers (cgo cannot call C function pointers directly).
#ifndef LAVIT_SHIM_LOADER_H
#define LAVIT_SHIM_LOADER_H
#include <stdint.h>
#include "csrc/lavit.h"
typedef struct {
	void* handle;
	int (*abi_version)(void);
	const char* (*last_error)(void);
	char* (*build_info)(void);
	void (*free_string)(char*);
	int (*set_threads)(int);
	int (*set_deterministic)(int);
	lavit_model* (*model_create)(const char*, const char*, uint64_t);
	void (*model_free)(lavit_model*);
	char* (*model_info)(lavit_model*);
	int64_t (*grad_numel)(lavit_model*);
	void* (*grad_data)(lavit_model*);
	void* (*param_data)(lavit_model*);
	int (*param_grad)(lavit_model*, int64_t, float*);
	int (*sync)(lavit_model*);
	float* (*grad_staging)(lavit_model*);
	int (*grads_stage)(lavit_model*, int);
	int64_t (*pre_stats_numel)(lavit_model*);
	int64_t (*post_stats_numel)(lavit_model*);
	int (*step_begin)(lavit_model*, const lavit_batch*, float*);
	int (*step_finish)(lavit_model*, const float*, float*, double*);
	int (*step_apply)(lavit_model*, int64_t, const float*, double);
	int (*set_shard)(lavit_model*, int64_t, int64_t, int);
	int (*set_checkpointing)(lavit_model*, int);
	int (*set_precision)(lavit_model*, int, int);
	int (*set_buckets)(lavit_model*, int64_t);
	int (*arm_buckets)(lavit_model*);
	int (*wait_bucket)(lavit_model*, int64_t);
	int (*grad_sq)(lavit_model*, float*, float*);
	int (*params_stage)(lavit_model*, int);
	float* (*optim_gather)(lavit_model*);
	char* (*last_metrics)(lavit_model*);
	int (*vq_enable)(lavit_model*, const float*, int64_t, const int64_t*, int64_t);
	int (*load_safetensors)(lavit_model*, const char*, const char*, const char*);
	int (*state_save)(lavit_model*, uint8_t**, int64_t*);
	int (*state_part)(lavit_model*, uint8_t**, int64_t*);
	void (*free_bytes)(uint8_t*);
	int (*state_load)(lavit_model*, const uint8_t*, int64_t);
	int (*eval_stage1)(lavit_model*, const float*, int64_t, const int64_t*, int64_t, float*, float*, uint8_t*, int64_t*, float*);
	int (*tokenize)(lavit_model*, const float*, int64_t, const int64_t*, int64_t, int64_t*, int64_t*);
	int (*lm_logprobs)(lavit_model*, const lavit_batch*, float*);
	int (*bench_steps)(lavit_model*, const lavit_batch*, int64_t, double*);
	int (*profile_steps)(lavit_model*, const lavit_batch*, int64_t, const char*);
} lavit_api;

int shim_load(const char* path, lavit_api* api, const char** missing);
int c_abi_version(lavit_api* a);
const char* c_last_error(lavit_api* a);
char* c_build_info(lavit_api* a);
void c_free_string(lavit_api* a, char* s);
int c_set_threads(lavit_api* a, int n);
int c_set_deterministic(lavit_api* a, int on);
lavit_model* c_model_create(lavit_api* a, const char* cfg, const char* dev, uint64_t seed);
void c_model_free(lavit_api* a, lavit_model* m);
char* c_model_info(lavit_api* a, lavit_model* m);
int64_t c_grad_numel(lavit_api* a, lavit_model* m);
void* c_grad_data(lavit_api* a, lavit_model* m);
void* c_param_data(lavit_api* a, lavit_model* m);
int c_param_grad(lavit_api* a, lavit_model* m, int64_t i, float* out);
int c_sync(lavit_api* a, lavit_model* m);
float* c_grad_staging(lavit_api* a, lavit_model* m);
int c_grads_stage(lavit_api* a, lavit_model* m, int to_host);
int64_t c_pre_stats_numel(lavit_api* a, lavit_model* m);
int64_t c_post_stats_numel(lavit_api* a, lavit_model* m);
int c_step_begin(lavit_api* a, lavit_model* m, const lavit_batch* b, float* pre);
int c_step_finish(lavit_api* a, lavit_model* m, const float* gpre, float* post, double* loss);
int c_step_apply(lavit_api* a, lavit_model* m, int64_t gb, const float* gpost, double grad_sq);
int c_set_shard(lavit_api* a, lavit_model* m, int64_t rank, int64_t world, int zero);
int c_set_checkpointing(lavit_api* a, lavit_model* m, int on);
int c_set_precision(lavit_api* a, lavit_model* m, int bf16, int reduce_bf16);
int c_set_buckets(lavit_api* a, lavit_model* m, int64_t bytes);
int c_arm_buckets(lavit_api* a, lavit_model* m);
int c_wait_bucket(lavit_api* a, lavit_model* m, int64_t k);
int c_grad_sq(lavit_api* a, lavit_model* m, float* hi, float* lo);
int c_params_stage(lavit_api* a, lavit_model* m, int to_host);
float* c_optim_gather(lavit_api* a, lavit_model* m);
char* c_last_metrics(lavit_api* a, lavit_model* m);
int c_vq_enable(lavit_api* a, lavit_model* m, const float* im, int64_t n, const int64_t* pos, int64_t step);
int c_load_safetensors(lavit_api* a, lavit_model* m, const char* path, const char* prefix, const char* mapping);
int c_state_save(lavit_api* a, lavit_model* m, uint8_t** out, int64_t* len);
int c_state_part(lavit_api* a, lavit_model* m, uint8_t** out, int64_t* len);
void c_free_bytes(lavit_api* a, uint8_t* p);
int c_state_load(lavit_api* a, lavit_model* m, const uint8_t* d, int64_t n);
int c_eval_stage1(lavit_api* a, lavit_model* m, const float* im, int64_t n, const int64_t* pos, int64_t step, float* cl, float* kp, uint8_t* k, int64_t* codes, float* feats);
int c_tokenize(lavit_api* a, lavit_model* m, const float* im, int64_t n, const int64_t* pos, int64_t step, int64_t* ids, int64_t* counts);
int c_lm_logprobs(lavit_api* a, lavit_model* m, const lavit_batch* b, float* out);
int c_bench_steps(lavit_api* a, lavit_model* m, const lavit_batch* b, int64_t n, double* ms);
int c_profile_steps(lavit_api* a, lavit_model* m, const lavit_batch* b, int64_t n, const char* path);
void c_tune_malloc(void);
void c_trim_heap(void);
#endif
