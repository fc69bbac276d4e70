// nccl_loader.c: see nccl_loader.h.
#include <dlfcn.h>
#include <limits.h>
#include "nccl_loader.h"

#define SYM(h, field, name) \
	*(void**)(&a->field) = dlsym(h, name); \
	if (!a->field) { *missing = name; dlclose(h); return -2; }

int lnccl_load(const char* path, lnccl_api* a, const char** missing) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) { *missing = dlerror(); return -1; }
	SYM(h, get_version, "ncclGetVersion")
	SYM(h, get_unique_id, "ncclGetUniqueId")
	SYM(h, comm_init_rank_config, "ncclCommInitRankConfig")
	SYM(h, comm_get_async_error, "ncclCommGetAsyncError")
	SYM(h, comm_abort, "ncclCommAbort")
	SYM(h, comm_finalize, "ncclCommFinalize")
	SYM(h, comm_destroy, "ncclCommDestroy")
	SYM(h, all_reduce, "ncclAllReduce")
	SYM(h, broadcast, "ncclBroadcast")
	SYM(h, reduce_scatter, "ncclReduceScatter")
	SYM(h, all_gather, "ncclAllGather")
	SYM(h, get_error_string, "ncclGetErrorString")
	*(void**)(&a->get_last_error) = dlsym(h, "ncclGetLastError");
	a->nccl = h;
	return 0;
}

int lnccl_load_cudart(const char* path, lnccl_api* a, const char** missing) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) { *missing = dlerror(); return -1; }
	SYM(h, cuda_set_device, "cudaSetDevice")
	SYM(h, cuda_get_device_count, "cudaGetDeviceCount")
	SYM(h, cuda_stream_create_with_flags, "cudaStreamCreateWithFlags")
	SYM(h, cuda_stream_query, "cudaStreamQuery")
	SYM(h, cuda_stream_destroy, "cudaStreamDestroy")
	SYM(h, cuda_malloc, "cudaMalloc")
	SYM(h, cuda_free, "cudaFree")
	SYM(h, cuda_memcpy, "cudaMemcpy")
	SYM(h, cuda_mem_get_info, "cudaMemGetInfo")
	SYM(h, cuda_get_error_string, "cudaGetErrorString")
	a->cudart = h;
	return 0;
}

void lnccl_unload(lnccl_api* a) {
	if (a->cudart) dlclose(a->cudart);
	if (a->nccl) dlclose(a->nccl);
	a->cudart = a->nccl = 0;
}

lnccl_result lnccl_get_version(lnccl_api* a, int* v) { return a->get_version(v); }
lnccl_result lnccl_get_unique_id(lnccl_api* a, lnccl_unique_id* id) { return a->get_unique_id(id); }

lnccl_result lnccl_comm_init(lnccl_api* a, lnccl_state* s, int nranks, int rank) {
	s->config.size = sizeof(lnccl_config);
	s->config.magic = 0xcafebeef;
	s->config.version = 21700; // NCCL_VERSION(2,17,0): the layout above
	s->config.blocking = 0;
	s->config.cga_cluster_size = INT_MIN; // NCCL_CONFIG_UNDEF_INT: library default
	s->config.min_ctas = INT_MIN;
	s->config.max_ctas = INT_MIN;
	s->config.net_name = 0;
	return a->comm_init_rank_config(&s->comm, nranks, s->id, rank, &s->config);
}
lnccl_result lnccl_comm_get_async_error(lnccl_api* a, lnccl_state* s) {
	return a->comm_get_async_error(s->comm, &s->async);
}
lnccl_result lnccl_comm_abort(lnccl_api* a, lnccl_state* s) { return a->comm_abort(s->comm); }
lnccl_result lnccl_comm_finalize(lnccl_api* a, lnccl_state* s) { return a->comm_finalize(s->comm); }
lnccl_result lnccl_comm_destroy(lnccl_api* a, lnccl_state* s) { return a->comm_destroy(s->comm); }
lnccl_result lnccl_all_reduce(lnccl_api* a, lnccl_state* s, uintptr_t buf, size_t count, int dtype, int op) {
	return a->all_reduce((const void*)buf, (void*)buf, count, dtype, op, s->comm, s->stream);
}
lnccl_result lnccl_broadcast(lnccl_api* a, lnccl_state* s, uintptr_t buf, size_t count, int dtype, int root) {
	return a->broadcast((const void*)buf, (void*)buf, count, dtype, root, s->comm, s->stream);
}
lnccl_result lnccl_reduce_scatter(lnccl_api* a, lnccl_state* s, uintptr_t buf, size_t count, size_t elem_size, int rank, int dtype, int op) {
	void* own = (void*)(buf + (uintptr_t)rank * count * elem_size);
	return a->reduce_scatter((const void*)buf, own, count, dtype, op, s->comm, s->stream);
}
lnccl_result lnccl_all_gather(lnccl_api* a, lnccl_state* s, uintptr_t buf, size_t count, size_t elem_size, int rank, int dtype) {
	const void* own = (const void*)(buf + (uintptr_t)rank * count * elem_size);
	return a->all_gather(own, (void*)buf, count, dtype, s->comm, s->stream);
}
const char* lnccl_error_string(lnccl_api* a, lnccl_result r) { return a->get_error_string(r); }
const char* lnccl_last_error(lnccl_api* a, lnccl_state* s) {
	return a->get_last_error ? a->get_last_error(s->comm) : "";
}

int lcuda_set_device(lnccl_api* a, int dev) { return a->cuda_set_device(dev); }
int lcuda_device_count(lnccl_api* a, int* n) { return a->cuda_get_device_count(n); }
int lcuda_stream_create(lnccl_api* a, lnccl_state* s) {
	return a->cuda_stream_create_with_flags(&s->stream, 1 /* cudaStreamNonBlocking */);
}
int lcuda_stream_query(lnccl_api* a, lnccl_state* s) { return a->cuda_stream_query(s->stream); }
int lcuda_stream_destroy(lnccl_api* a, lnccl_state* s) { return a->cuda_stream_destroy(s->stream); }
int lcuda_malloc(lnccl_api* a, uintptr_t* p, size_t n) {
	void* q = 0;
	int r = a->cuda_malloc(&q, n);
	*p = (uintptr_t)q;
	return r;
}
int lcuda_free(lnccl_api* a, uintptr_t p) { return a->cuda_free((void*)p); }
int lcuda_memcpy_htod(lnccl_api* a, uintptr_t dst, const void* src, size_t n) {
	return a->cuda_memcpy((void*)dst, src, n, 1 /* cudaMemcpyHostToDevice */);
}
int lcuda_mem_get_info(lnccl_api* a, size_t* free_bytes, size_t* total_bytes) {
	return a->cuda_mem_get_info(free_bytes, total_bytes);
}
int lcuda_memcpy_dtoh(lnccl_api* a, void* dst, uintptr_t src, size_t n) {
	return a->cuda_memcpy(dst, (const void*)src, n, 2 /* cudaMemcpyDeviceToHost */);
}
const char* lcuda_error_string(lnccl_api* a, int r) { return a->cuda_get_error_string(r); }
