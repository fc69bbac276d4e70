// fake_nccl.c: a stand-in for libnccl.so.2 and libcudart.so on machines
// without a GPU, so the NCCL backend's loading, rendezvous, polling,
// deadline and abort paths, and the worker's whole step loop over NCCL,
// run in tests (`make fake-nccl` builds it as bin/fake-nccl/libnccl.so.2).
//
// "Device" memory is host memory. A communicator of 1 to 8 ranks spans
// processes (or threads): the ranks meet in a POSIX shared-memory segment
// named after the unique id, each rank has a slot there, and an operation
// moves through it in chunks: every rank copies its chunk to its slot and
// publishes a sequence number, waits for every rank's, reduces the slots in
// the order lavit's ring does (see reduce: every rank gets the same bits, the
// ring's) or copies the slots it needs (broadcast, all-gather), and waits
// for every rank to be done before the slots are reused. Reduce-scatter
// and all-gather run in place only on a buffer of world blocks (as lavit
// calls them): the reduce-scatter reduces block rank alone, in the order
// of the all-reduce. Reductions (see reduction) are float32 sums and
// averages (ncclFloat32, ncclSum or ncclAvg); float32 maxima (ncclFloat32,
// ncclMax: NaN wins, +0 over -0, as collective.MaxFloat32; real NCCL's
// float max is CUDA's fmaxf, which drops a NaN: here the fake follows
// lavit's ring, not NCCL); uint32 sums modulo 2^32 (ncclUint32, ncclSum:
// lavit's SumUint32 on the bits of float32 words); and bfloat16 sums
// (ncclBfloat16, ncclSum only, an even count: lavit packs two per float32
// word, and the fake cuts such a buffer into segments of whole words, as
// the ring does; each add is done in float32 and rounded to bfloat16,
// nearest even). Operations run on a thread per communicator,
// asynchronously like NCCL's: the stream is "not ready" until the
// operation is done, and ncclCommGetAsyncError reports a failure. A rank
// that aborts, or whose process dies, fails its peers' operations with
// ncclRemoteError.
//
// Behaviour is steered by environment variables read at call time:
//   FAKE_NCCL_INIT_HANG=1     init stays in progress forever
//   FAKE_NCCL_OP_HANG=1       operations never complete
//   FAKE_NCCL_REMOTE_ERROR=1  operations fail with ncclRemoteError
//   FAKE_NCCL_LOG=path        lifecycle calls are appended to path
//   LAVIT_FAKE_GPUS=N         N devices (default 1), as the worker's fake GPUs
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { ok = 0, invalidArgument = 4, internalError = 3, remoteError = 6, inProgress = 7 };
enum { maxRanks = 8, slotBytes = 1 << 20, magic = 0x464b4e43 /* "FKNC" */ };

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct {
	size_t size; unsigned int magic; unsigned int version;
	int blocking; int cgaClusterSize; int minCTAs; int maxCTAs; const char* netName;
} ncclConfig_t;

// The shared segment: a header, then one slot per rank.
typedef struct {
	atomic_int joined;            // ranks attached
	atomic_int aborted;           // a rank aborted: every pending operation fails
	atomic_int pid[maxRanks];     // each rank's process, to notice one that died
	atomic_llong arrived[maxRanks]; // the last chunk each rank has published
	atomic_llong finished[maxRanks]; // the last chunk each rank has read
} shared;

typedef struct fake_stream fake_stream;

enum { opAllReduce, opBroadcast, opReduceScatter, opAllGather };

// How a reduction combines 4-byte words (see combine): lavit's ops.
typedef enum {
	redNone,    // not a reduction (broadcast, all-gather)
	redSum,     // float32 sum (ncclFloat32, ncclSum)
	redAvg,     // float32 sum, then ·1/world (ncclFloat32, ncclAvg)
	redSumBF16, // words of two bfloat16s, each sum rounded to bfloat16 (ncclBfloat16, ncclSum)
	redSumU32,  // uint32 sum modulo 2^32 (ncclUint32, ncclSum)
	redMax,     // float32 maximum, NaN wins, +0 over -0 (ncclFloat32, ncclMax)
} red_t;

typedef struct {
	int kind;             // opAllReduce, …
	void* buf;            // the whole buffer: for reduce-scatter and all-gather, world blocks
	size_t count;         // 4-byte words in buf (float32s, uint32s or pairs of bfloat16s)
	red_t red;            // how a reduction combines the words
	int root;
	fake_stream* stream;
} op_t;

typedef struct {
	int rank, world;
	char name[64];
	shared* sh; size_t mapped;
	atomic_int async;     // ncclSuccess, ncclInProgress or the failure
	atomic_int init_hang;
	long long chunk;      // chunks done by this rank
	pthread_t thread; int started;
	pthread_mutex_t mu; pthread_cond_t cv;
	op_t queue[16]; int head, tail;
	atomic_int quit, abort;
} fake_comm;

struct fake_stream { atomic_int pending; atomic_int forever; };

static int flag(const char* name) { const char* v = getenv(name); return v && strcmp(v, "1") == 0; }
static void logf_(const char* what) {
	const char* p = getenv("FAKE_NCCL_LOG");
	if (!p || !*p) return;
	FILE* f = fopen(p, "a");
	if (f) { fprintf(f, "%s\n", what); fclose(f); }
}
static char* slot(fake_comm* c, int r) { return (char*)c->sh + sizeof(shared) + (size_t)r * slotBytes; }

int ncclGetVersion(int* v) { *v = 22105; return ok; }

int ncclGetUniqueId(ncclUniqueId* id) {
	memset(id, 0, sizeof *id);
	uint32_t m = magic;
	memcpy(id->internal, &m, 4);
	unsigned char rnd[16];
	FILE* f = fopen("/dev/urandom", "r");
	if (!f || fread(rnd, 1, sizeof rnd, f) != sizeof rnd) { if (f) fclose(f); return internalError; }
	fclose(f);
	memcpy(id->internal + 4, rnd, sizeof rnd);
	return ok;
}

// failed reports why waiting for the peers must stop, or 0.
static int failed(fake_comm* c) {
	if (atomic_load(&c->abort) || atomic_load(&c->sh->aborted)) return remoteError;
	for (int r = 0; r < c->world; r++) {
		int pid = atomic_load(&c->sh->pid[r]);
		if (r != c->rank && pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) return remoteError;
	}
	return 0;
}

// await waits until every rank's counter reached n, or fails.
static int await(fake_comm* c, atomic_llong* counters, long long n) {
	for (unsigned spins = 0;; spins++) {
		int all = 1;
		for (int r = 0; r < c->world && all; r++) all = atomic_load(&counters[r]) >= n;
		if (all) return 0;
		if ((spins & 255) == 0) { int f = failed(c); if (f) return f; }
		if (spins > 1000) { struct timespec ts = {0, 20000}; nanosleep(&ts, NULL); } else sched_yield();
	}
}

// segment is the k-th of world near-equal parts of count elements (the
// first count mod world one longer), as lavit's ring cuts its buffer; for
// a count that world divides, block k.
static void segment(size_t count, size_t w, size_t k, size_t* off, size_t* n) {
	size_t base = count / w, extra = count % w;
	*off = k * base + (k < extra ? k : extra);
	*n = base + (k < extra ? 1 : 0);
}

// overlap intersects segment [so, so+sn) with the chunk [off, off+n).
static int overlap(size_t so, size_t sn, size_t off, size_t n, size_t* lo, size_t* hi) {
	*lo = so > off ? so : off;
	*hi = so + sn < off + n ? so + sn : off + n;
	return *lo < *hi;
}

// bf16_round rounds the float32 bits b to bfloat16, to nearest even; a NaN
// stays a NaN with the quiet bit set (collective.BF16FromFloat32).
static uint16_t bf16_round(uint32_t b) {
	if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
	return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
static float f32_of(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static uint32_t bits_of(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

// add_bf16_word adds the two bfloat16s packed in word s to those in word d,
// each in float32 then rounded to bfloat16 (collective.AddBF16: d is the
// ring's own value, s the partial sum it received).
static uint32_t add_bf16_word(uint32_t d, uint32_t s) {
	uint32_t lo = bits_of(f32_of(d << 16) + f32_of(s << 16));
	uint32_t hi = bits_of(f32_of(d & 0xffff0000u) + f32_of(s & 0xffff0000u));
	return (uint32_t)bf16_round(lo) | (uint32_t)bf16_round(hi) << 16;
}

// max_f32 is collective.MaxFloat32 on one element: d is the ring's own
// value, s the partial maximum it received. A NaN in d stays, a NaN in s
// wins over a number, and of two equal values the one with the sign bit
// clear (+0 over -0) wins; so the bits match the ring's, NaN payloads
// included, when the order is the ring's.
static uint32_t max_f32(uint32_t d, uint32_t s) {
	float fd = f32_of(d), fs = f32_of(s);
	if (fd != fd) return d;
	if (fs != fs || fs > fd || (fs == fd && (d >> 31))) return s;
	return d;
}

// combine folds the words s (the slot of the next rank in the ring's
// order: that rank's own value) into the running reduction acc, m words,
// as that rank of lavit's ring does: acc = s ⊕ acc, with s as the
// kernel's dst (collective.AddFloat32, AddBF16, AddUint32, MaxFloat32).
static void combine(red_t red, float* acc, const float* s, size_t m) {
	uint32_t* a = (uint32_t*)acc;
	const uint32_t* o = (const uint32_t*)s;
	switch (red) {
	case redNone:
		break;
	case redSum:
	case redAvg:
		for (size_t i = 0; i < m; i++) acc[i] += s[i];
		break;
	case redSumBF16:
		for (size_t i = 0; i < m; i++) a[i] = add_bf16_word(o[i], a[i]);
		break;
	case redSumU32:
		for (size_t i = 0; i < m; i++) a[i] = o[i] + a[i]; // unsigned: modulo 2^32
		break;
	case redMax:
		for (size_t i = 0; i < m; i++) a[i] = max_f32(o[i], a[i]);
		break;
	}
}

// reduce combines the slots into buf[off, off+n) of a count-element
// all-reduce (within segment only alone when only ≥ 0: a reduce-scatter),
// in the ring's order: segment k's reduction runs from rank k+1 around the
// ring to rank k, ((x_{k+1} ⊕ x_{k+2}) ⊕ …) ⊕ x_k, the order in which the
// ring's reduce-scatter leaves it on rank k; an average then multiplies
// by 1/world. So every rank gets the same bits, and exactly the bits
// lavit's ring all-reduce (or reduce-scatter) gives: a run over this fake
// must end where the same run over the ring does, and any difference is
// the NCCL path's. ⊕ is red's (see combine); only redAvg is scaled.
static void reduce(fake_comm* c, float* buf, size_t off, size_t n, size_t count, red_t red, int only) {
	size_t w = (size_t)c->world;
	const float scale = 1.0f / (float)c->world;
	for (size_t k = 0; k < w; k++) {
		size_t so, sn, lo, hi;
		segment(count, w, k, &so, &sn);
		if ((only >= 0 && k != (size_t)only) || !overlap(so, sn, off, n, &lo, &hi)) continue;
		float* acc = buf + lo;
		memcpy(acc, (const float*)slot(c, (int)((k + 1) % w)) + (lo - off), (hi - lo) * sizeof(float));
		for (size_t j = 2; j <= w; j++)
			combine(red, acc, (const float*)slot(c, (int)((k + j) % w)) + (lo - off), hi - lo);
		if (red == redAvg) for (size_t i = 0; i < hi - lo; i++) acc[i] *= scale;
	}
}

// run performs one operation through the shared slots, chunk by chunk.
static int run(fake_comm* c, op_t* o) {
	float* buf = o->buf;
	const size_t per = slotBytes / sizeof(float);
	for (size_t off = 0; off < o->count || (o->count == 0 && off == 0); off += per) {
		size_t n = o->count - off < per ? o->count - off : per;
		long long k = ++c->chunk;
		if (o->kind != opBroadcast || c->rank == o->root) memcpy(slot(c, c->rank), buf + off, n * sizeof(float));
		atomic_store(&c->sh->arrived[c->rank], k);
		int f = await(c, c->sh->arrived, k);
		if (f) return f;
		switch (o->kind) {
		case opAllReduce: reduce(c, buf, off, n, o->count, o->red, -1); break;
		case opReduceScatter: reduce(c, buf, off, n, o->count, o->red, c->rank); break;
		case opBroadcast:
			if (c->rank != o->root) memcpy(buf + off, slot(c, o->root), n * sizeof(float));
			break;
		case opAllGather:
			for (int q = 0; q < c->world; q++) {
				size_t so, sn, lo, hi;
				segment(o->count, (size_t)c->world, (size_t)q, &so, &sn);
				if (q == c->rank || !overlap(so, sn, off, n, &lo, &hi)) continue;
				memcpy(buf + lo, (const float*)slot(c, q) + (lo - off), (hi - lo) * sizeof(float));
			}
			break;
		}
		atomic_store(&c->sh->finished[c->rank], k);
		if ((f = await(c, c->sh->finished, k))) return f;
		if (o->count == 0) break;
	}
	return 0;
}

static void* worker(void* arg) {
	fake_comm* c = arg;
	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (c->head == c->tail && !atomic_load(&c->quit)) pthread_cond_wait(&c->cv, &c->mu);
		if (atomic_load(&c->quit)) break;
		op_t o = c->queue[c->head % 16];
		pthread_mutex_unlock(&c->mu);
		int r = atomic_load(&c->async) == ok ? run(c, &o) : atomic_load(&c->async);
		if (r) atomic_store(&c->async, r);
		else atomic_fetch_sub(&o.stream->pending, 1);
		pthread_mutex_lock(&c->mu);
		c->head++;
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

int ncclCommInitRankConfig(void** comm, int n, ncclUniqueId id, int rank, ncclConfig_t* cfg) {
	uint32_t m;
	memcpy(&m, id.internal, 4);
	if (cfg->magic != 0xcafebeef || cfg->size != sizeof(ncclConfig_t) || cfg->version < 21400 ||
	    cfg->blocking != 0 || cfg->minCTAs != INT_MIN || cfg->netName != NULL) return invalidArgument;
	if (n < 1 || n > maxRanks || rank < 0 || rank >= n || m != magic) return invalidArgument;
	fake_comm* c = calloc(1, sizeof *c);
	c->rank = rank; c->world = n;
	snprintf(c->name, sizeof c->name, "/lavit-fake-nccl-");
	for (int i = 4; i < 20; i++) snprintf(c->name + strlen(c->name), 3, "%02x", (unsigned char)id.internal[i]);
	c->mapped = sizeof(shared) + (size_t)n * slotBytes;
	int fd = shm_open(c->name, O_RDWR | O_CREAT, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)c->mapped) != 0) { if (fd >= 0) close(fd); free(c); return internalError; }
	c->sh = mmap(NULL, c->mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (c->sh == MAP_FAILED) { free(c); return internalError; }
	atomic_store(&c->sh->pid[rank], (int)getpid());
	atomic_fetch_add(&c->sh->joined, 1);
	atomic_store(&c->async, inProgress);
	atomic_store(&c->init_hang, flag("FAKE_NCCL_INIT_HANG"));
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	*comm = c;
	logf_("init");
	return inProgress;
}

int ncclCommGetAsyncError(void* comm, int* res) {
	fake_comm* c = comm;
	if (atomic_load(&c->async) == inProgress) {
		if (atomic_load(&c->init_hang) || atomic_load(&c->sh->joined) < c->world) { *res = inProgress; return ok; }
		// Every rank joined: the name can go (the mappings stay), and the
		// operations' thread starts.
		if (c->rank == 0) shm_unlink(c->name);
		c->started = pthread_create(&c->thread, NULL, worker, c) == 0;
		atomic_store(&c->async, c->started ? ok : internalError);
	}
	*res = atomic_load(&c->async);
	return ok;
}

static void release(fake_comm* c) {
	if (c->started) {
		pthread_mutex_lock(&c->mu);
		atomic_store(&c->quit, 1);
		pthread_cond_broadcast(&c->cv);
		pthread_mutex_unlock(&c->mu);
		pthread_join(c->thread, NULL);
	}
	shm_unlink(c->name); // gone already once every rank joined; else nobody else will
	munmap(c->sh, c->mapped);
	free(c);
}

int ncclCommAbort(void* comm) {
	fake_comm* c = comm;
	logf_("abort");
	atomic_store(&c->abort, 1);
	atomic_store(&c->sh->aborted, 1);
	release(c);
	return ok;
}
int ncclCommFinalize(void* comm) { logf_("finalize"); return ok; }
int ncclCommDestroy(void* comm) { logf_("destroy"); release(comm); return ok; }

// enqueue queues an operation on buf, count 4-byte words (float32s,
// uint32s or bfloat16 pairs, as red says), in place.
static int enqueue(int kind, void* buf, size_t count, red_t red, int root, void* comm, void* stream) {
	fake_comm* c = comm;
	fake_stream* s = stream;
	logf_("op");
	atomic_fetch_add(&s->pending, 1);
	if (flag("FAKE_NCCL_OP_HANG") || flag("FAKE_NCCL_REMOTE_ERROR")) atomic_store(&s->forever, 1);
	if (flag("FAKE_NCCL_REMOTE_ERROR")) { atomic_store(&c->async, remoteError); return ok; }
	if (atomic_load(&s->forever)) return ok;
	pthread_mutex_lock(&c->mu);
	if (c->tail - c->head >= 16) { pthread_mutex_unlock(&c->mu); return internalError; }
	c->queue[c->tail % 16] = (op_t){kind, buf, count, red, root, s};
	c->tail++;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	return ok;
}
// The only types and ops lavit uses (nccl.h's ncclDataType_t, ncclRedOp_t).
enum { uint32 = 3, float32 = 7, bfloat16 = 9 };
enum { ncclSum = 0, ncclMax = 2, ncclAvg = 4 };

// reduction checks a reduction's type and op, sets *red, and returns the
// count in 4-byte words (bfloat16: an even count, summed only), or -1:
// invalid. float32 by sum, average or max; uint32 and bfloat16 by sum.
static long long reduction(size_t count, int dtype, int redop, red_t* red) {
	switch (dtype) {
	case float32:
		switch (redop) {
		case ncclSum: *red = redSum; return (long long)count;
		case ncclAvg: *red = redAvg; return (long long)count;
		case ncclMax: *red = redMax; return (long long)count;
		}
		return -1;
	case uint32:
		if (redop != ncclSum) return -1;
		*red = redSumU32;
		return (long long)count;
	case bfloat16:
		if (redop != ncclSum || count % 2 != 0) return -1;
		*red = redSumBF16;
		return (long long)(count / 2);
	}
	return -1;
}

int ncclAllReduce(const void* send, void* recv, size_t count, int dtype, int redop, void* comm, void* stream) {
	red_t red;
	long long words = reduction(count, dtype, redop, &red);
	if (words < 0) return invalidArgument;
	if (send != recv) memcpy(recv, send, (size_t)words * 4);
	return enqueue(opAllReduce, recv, (size_t)words, red, 0, comm, stream);
}
int ncclBroadcast(const void* send, void* recv, size_t count, int dtype, int root, void* comm, void* stream) {
	fake_comm* c = comm;
	if (dtype != float32 || root < 0 || root >= c->world) return invalidArgument;
	if (send != recv) memcpy(recv, send, count * 4);
	return enqueue(opBroadcast, recv, count, redNone, root, comm, stream);
}
// ncclReduceScatter: in place only (recv = send + rank·recvcount), as lavit calls it.
int ncclReduceScatter(const void* send, void* recv, size_t recvcount, int dtype, int redop, void* comm, void* stream) {
	fake_comm* c = comm;
	red_t red;
	long long words = reduction(recvcount, dtype, redop, &red);
	if (words < 0) return invalidArgument;
	if ((const float*)send + (size_t)c->rank * (size_t)words != (float*)recv) return invalidArgument;
	return enqueue(opReduceScatter, (void*)send, (size_t)words * (size_t)c->world, red, 0, comm, stream);
}
// ncclAllGather: send may be anywhere; in place it is recv + rank·sendcount.
int ncclAllGather(const void* send, void* recv, size_t sendcount, int dtype, void* comm, void* stream) {
	fake_comm* c = comm;
	if (dtype != float32) return invalidArgument;
	float* own = (float*)recv + (size_t)c->rank * sendcount;
	if ((const float*)send != own) memmove(own, send, sendcount * 4);
	return enqueue(opAllGather, recv, sendcount * (size_t)c->world, redNone, 0, comm, stream);
}
const char* ncclGetErrorString(int r) { return r == remoteError ? "remote process exited or there was a network error" : "fake nccl error"; }
const char* ncclGetLastError(void* comm) { return "fake last error"; }

// One device, or LAVIT_FAKE_GPUS of them (the worker's fake GPUs).
static int devices(void) { const char* v = getenv("LAVIT_FAKE_GPUS"); int n = v ? atoi(v) : 0; return n > 0 ? n : 1; }
int cudaSetDevice(int d) { return d >= 0 && d < devices() ? 0 : 101; } // cudaErrorInvalidDevice
int cudaGetDeviceCount(int* n) { *n = devices(); return 0; }
int cudaStreamCreateWithFlags(void** s, unsigned int flags) { *s = calloc(1, sizeof(fake_stream)); return 0; }
int cudaStreamQuery(void* stream) {
	fake_stream* s = stream;
	return atomic_load(&s->forever) || atomic_load(&s->pending) > 0 ? 600 : 0; // cudaErrorNotReady
}
int cudaStreamDestroy(void* s) { free(s); return 0; }
int cudaMalloc(void** p, size_t n) { *p = malloc(n ? n : 1); return *p ? 0 : 2; }
int cudaFree(void* p) { free(p); return 0; }
int cudaMemcpy(void* dst, const void* src, size_t n, int kind) { memcpy(dst, src, n); return 0; }
int cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) { *free_bytes = (size_t)15 << 30; *total_bytes = (size_t)16 << 30; return 0; }
const char* cudaGetErrorString(int r) { return "fake cuda error"; }
