// fake_nccl.c: a stand-in for libnccl.so.2 and libcudart.so, built by the
// tests, so the binding's loading, polling, deadline and abort paths run
// without a GPU. "Device" memory is host memory; a world of one rank is
// the only world. Behaviour is steered by environment variables read at
// call time:
//   FAKE_NCCL_INIT_HANG=1     init stays in progress forever
//   FAKE_NCCL_OP_HANG=1       operations never complete
//   FAKE_NCCL_REMOTE_ERROR=1  operations fail with ncclRemoteError
//   FAKE_NCCL_LOG=path        lifecycle calls are appended to path
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct {
	size_t size; unsigned int magic; unsigned int version;
	int blocking; int cgaClusterSize; int minCTAs; int maxCTAs; const char* netName;
} ncclConfig_t;
typedef struct { int polls_left; int async; int hang; } fake_comm;
typedef struct { int pending; int forever; } fake_stream;

static int flag(const char* name) { const char* v = getenv(name); return v && strcmp(v, "1") == 0; }
static void logf_(const char* what) {
	const char* p = getenv("FAKE_NCCL_LOG");
	if (!p || !*p) return;
	FILE* f = fopen(p, "a");
	if (f) { fprintf(f, "%s\n", what); fclose(f); }
}

int ncclGetVersion(int* v) { *v = 22105; return 0; }
int ncclGetUniqueId(ncclUniqueId* id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)i; return 0; }
int ncclCommInitRankConfig(void** comm, int n, ncclUniqueId id, int rank, ncclConfig_t* cfg) {
	if (cfg->magic != 0xcafebeef || cfg->size != sizeof(ncclConfig_t) || cfg->version < 21400 ||
	    cfg->blocking != 0 || cfg->minCTAs != INT_MIN || cfg->netName != NULL) return 4; // ncclInvalidArgument
	if (n != 1 || rank != 0 || id.internal[5] != 5) return 4;
	fake_comm* c = calloc(1, sizeof *c);
	c->polls_left = 3;
	c->hang = flag("FAKE_NCCL_INIT_HANG");
	*comm = c;
	logf_("init");
	return 7; // ncclInProgress
}
int ncclCommGetAsyncError(void* comm, int* res) {
	fake_comm* c = comm;
	if (c->hang || c->polls_left > 0) { if (c->polls_left > 0) c->polls_left--; *res = 7; return 0; }
	*res = c->async;
	return 0;
}
int ncclCommAbort(void* comm) { logf_("abort"); free(comm); return 0; }
int ncclCommFinalize(void* comm) { logf_("finalize"); ((fake_comm*)comm)->polls_left = 2; return 7; }
int ncclCommDestroy(void* comm) { logf_("destroy"); free(comm); return 0; }
static int op(const void* send, void* recv, size_t count, int dtype, void* comm, void* stream) {
	fake_comm* c = comm;
	fake_stream* s = stream;
	if (dtype != 7) return 4; // the tests use float32 only
	logf_("op");
	if (send != recv) memcpy(recv, send, count * 4);
	s->pending = 2;
	s->forever = flag("FAKE_NCCL_OP_HANG") || flag("FAKE_NCCL_REMOTE_ERROR");
	if (flag("FAKE_NCCL_REMOTE_ERROR")) c->async = 6; // ncclRemoteError
	return 0;
}
int ncclAllReduce(const void* send, void* recv, size_t count, int dtype, int redop, void* comm, void* stream) {
	if (redop != 0 && redop != 4) return 4;
	return op(send, recv, count, dtype, comm, stream);
}
int ncclBroadcast(const void* send, void* recv, size_t count, int dtype, int root, void* comm, void* stream) {
	if (root != 0) return 4;
	return op(send, recv, count, dtype, comm, stream);
}
const char* ncclGetErrorString(int r) { return r == 6 ? "remote process exited or there was a network error" : "fake nccl error"; }
const char* ncclGetLastError(void* comm) { return "fake last error"; }

int cudaSetDevice(int d) { return d == 0 ? 0 : 101; } // cudaErrorInvalidDevice
int cudaGetDeviceCount(int* n) { *n = 1; return 0; }
int cudaStreamCreateWithFlags(void** s, unsigned int flags) { *s = calloc(1, sizeof(fake_stream)); return 0; }
int cudaStreamQuery(void* stream) {
	fake_stream* s = stream;
	if (s->forever) return 600; // cudaErrorNotReady
	if (s->pending > 0) { s->pending--; return 600; }
	return 0;
}
int cudaStreamDestroy(void* s) { free(s); return 0; }
int cudaMalloc(void** p, size_t n) { *p = malloc(n); return *p ? 0 : 2; }
int cudaFree(void* p) { free(p); return 0; }
int cudaMemcpy(void* dst, const void* src, size_t n, int kind) { memcpy(dst, src, n); return 0; }
const char* cudaGetErrorString(int r) { return "fake cuda error"; }
