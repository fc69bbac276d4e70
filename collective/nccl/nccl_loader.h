// nccl_loader.h: the few NCCL and CUDA runtime entry points lavit uses,
// declared here (no NVIDIA headers needed to build), resolved with dlopen
// and dlsym at run time, and called through trampolines (cgo cannot call
// C function pointers directly).
#ifndef LAVIT_NCCL_LOADER_H
#define LAVIT_NCCL_LOADER_H
#include <stddef.h>
#include <stdint.h>

typedef int lnccl_result;  // ncclResult_t
typedef void* lnccl_comm;  // ncclComm_t (opaque)
typedef void* lcuda_stream; // cudaStream_t (opaque)
typedef struct { char internal[128]; } lnccl_unique_id; // NCCL_UNIQUE_ID_BYTES

// The prefix of ncclConfig_t that lavit sets (layout of NCCL >= 2.17; NCCL
// copies min(size, its own size) bytes and checks magic and version).
typedef struct {
	size_t size;
	unsigned int magic;
	unsigned int version;
	int blocking;
	int cga_cluster_size;
	int min_ctas;
	int max_ctas;
	const char* net_name;
} lnccl_config;

// Per-communicator state in C memory, so that nothing NCCL or CUDA writes
// ever lands in the Go heap.
typedef struct {
	lnccl_comm comm;
	lcuda_stream stream;
	lnccl_result async;
	lnccl_config config;
	lnccl_unique_id id;
} lnccl_state;

typedef struct {
	void* nccl;
	void* cudart;
	lnccl_result (*get_version)(int*);
	lnccl_result (*get_unique_id)(lnccl_unique_id*);
	lnccl_result (*comm_init_rank_config)(lnccl_comm*, int, lnccl_unique_id, int, lnccl_config*);
	lnccl_result (*comm_get_async_error)(lnccl_comm, lnccl_result*);
	lnccl_result (*comm_abort)(lnccl_comm);
	lnccl_result (*comm_finalize)(lnccl_comm);
	lnccl_result (*comm_destroy)(lnccl_comm);
	lnccl_result (*all_reduce)(const void*, void*, size_t, int, int, lnccl_comm, lcuda_stream);
	lnccl_result (*broadcast)(const void*, void*, size_t, int, int, lnccl_comm, lcuda_stream);
	lnccl_result (*reduce_scatter)(const void*, void*, size_t, int, int, lnccl_comm, lcuda_stream);
	lnccl_result (*all_gather)(const void*, void*, size_t, int, lnccl_comm, lcuda_stream);
	const char* (*get_error_string)(lnccl_result);
	const char* (*get_last_error)(lnccl_comm); // optional (NCCL >= 2.13)
	int (*cuda_set_device)(int);
	int (*cuda_get_device_count)(int*);
	int (*cuda_stream_create_with_flags)(lcuda_stream*, unsigned int);
	int (*cuda_stream_query)(lcuda_stream);
	int (*cuda_stream_destroy)(lcuda_stream);
	int (*cuda_malloc)(void**, size_t);
	int (*cuda_free)(void*);
	int (*cuda_memcpy)(void*, const void*, size_t, int);
	int (*cuda_mem_get_info)(size_t*, size_t*);
	const char* (*cuda_get_error_string)(int);
} lnccl_api;

// lnccl_load opens NCCL at path: 0 on success, -1 if dlopen failed
// (*missing = dlerror()), -2 if a symbol is missing (*missing = its name).
int lnccl_load(const char* path, lnccl_api* a, const char** missing);
// lnccl_load_cudart opens the CUDA runtime at path, same results.
int lnccl_load_cudart(const char* path, lnccl_api* a, const char** missing);
void lnccl_unload(lnccl_api* a);

lnccl_result lnccl_get_version(lnccl_api* a, int* v);
lnccl_result lnccl_get_unique_id(lnccl_api* a, lnccl_unique_id* id);
lnccl_result lnccl_comm_init(lnccl_api* a, lnccl_state* s, int nranks, int rank);
lnccl_result lnccl_comm_get_async_error(lnccl_api* a, lnccl_state* s);
lnccl_result lnccl_comm_abort(lnccl_api* a, lnccl_state* s);
lnccl_result lnccl_comm_finalize(lnccl_api* a, lnccl_state* s);
lnccl_result lnccl_comm_destroy(lnccl_api* a, lnccl_state* s);
lnccl_result lnccl_all_reduce(lnccl_api* a, lnccl_state* s, uintptr_t buf, size_t count, int dtype, int op);
lnccl_result lnccl_broadcast(lnccl_api* a, lnccl_state* s, uintptr_t buf, size_t count, int dtype, int root);
// lnccl_reduce_scatter and lnccl_all_gather run in place on buf, which holds
// nranks blocks of count elements of elem_size bytes: the reduce-scatter
// leaves this rank's block at buf + rank*count, the all-gather sends it from
// there.
lnccl_result lnccl_reduce_scatter(lnccl_api* a, lnccl_state* s, uintptr_t buf, size_t count, size_t elem_size, int rank, int dtype, int op);
lnccl_result lnccl_all_gather(lnccl_api* a, lnccl_state* s, uintptr_t buf, size_t count, size_t elem_size, int rank, int dtype);
const char* lnccl_error_string(lnccl_api* a, lnccl_result r);
const char* lnccl_last_error(lnccl_api* a, lnccl_state* s);

int lcuda_set_device(lnccl_api* a, int dev);
int lcuda_device_count(lnccl_api* a, int* n);
int lcuda_stream_create(lnccl_api* a, lnccl_state* s);
int lcuda_stream_query(lnccl_api* a, lnccl_state* s);
int lcuda_stream_destroy(lnccl_api* a, lnccl_state* s);
int lcuda_malloc(lnccl_api* a, uintptr_t* p, size_t n);
int lcuda_free(lnccl_api* a, uintptr_t p);
int lcuda_memcpy_htod(lnccl_api* a, uintptr_t dst, const void* src, size_t n);
int lcuda_memcpy_dtoh(lnccl_api* a, void* dst, uintptr_t src, size_t n);
int lcuda_mem_get_info(lnccl_api* a, size_t* free_bytes, size_t* total_bytes);
const char* lcuda_error_string(lnccl_api* a, int r);
#endif
