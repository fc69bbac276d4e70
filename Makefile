# lavit: see README.md. `make demo` and `make test` are the two entry points;
# both install what they need first (`make deps`, idempotent).

GO      ?= go
BIN     := bin
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# The race detector needs cgo; the coordinator itself is built without it.
TESTFLAGS ?= -race -count=1 -timeout 30m

# The libtorch shim. Default: Debian's libtorch-dev (CPU). For CUDA give a
# libtorch (e.g. PyTorch's bundled one): make torch TORCH_DIR=/path/to/torch
TORCH_DIR ?=
CXX       ?= g++
SHIM      := $(BIN)/liblavit_torch.so
SHIM_SRC  := trainer/csrc/models.cpp trainer/csrc/shim.cpp
SHIM_HDR  := trainer/csrc/lavit.h trainer/csrc/models.h
ifeq ($(TORCH_DIR),)
TORCH_CFLAGS := -I/usr/include/torch/csrc/api/include
TORCH_LIBS   := -ltorch -ltorch_cpu -lc10
else
TORCH_CFLAGS := -I$(TORCH_DIR)/include -I$(TORCH_DIR)/include/torch/csrc/api/include $(TORCH_CXX_FLAGS)
TORCH_LIBS   := -L$(TORCH_DIR)/lib -Wl,-rpath,$(TORCH_DIR)/lib -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 $(if $(wildcard $(TORCH_DIR)/lib/libtorch_cuda.so),-ltorch_cuda -lc10_cuda) -Wl,--as-needed
endif

# The fake NCCL: plays libnccl.so.2 and libcudart.so on CPU machines, so
# the NCCL backend and the worker's loop over it run in tests and benchmarks.
FAKE_NCCL := $(BIN)/fake-nccl/libnccl.so.2

.PHONY: all deps build torch fake-nccl gpu-bundle test demo bench lint fmt clean

all: build

## deps: install what builds and tests need (idempotent; safe to re-run)
deps:
	@deploy/local/deps.sh

## build: bin/lavit-coord (CGO_ENABLED=0) and bin/lavit-worker
build: deps
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/lavit-coord ./cmd/lavit-coord
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/lavit-worker ./cmd/lavit-worker

## torch: the libtorch shim bin/liblavit_torch.so (loaded by lavit-worker at run time)
torch: deps $(SHIM)

$(SHIM): $(SHIM_SRC) $(SHIM_HDR)
	@mkdir -p $(BIN)
	$(CXX) -O2 -std=c++17 -fPIC -shared -Wall $(TORCH_CFLAGS) $(SHIM_SRC) $(TORCH_LIBS) -o $@

## fake-nccl: bin/fake-nccl/libnccl.so.2 (and the libcudart.so it also plays)
fake-nccl: $(FAKE_NCCL)

$(FAKE_NCCL): collective/nccl/fakenccl/fake_nccl.c
	@mkdir -p $(dir $@)
	$(CC) -shared -fPIC -O2 -Wall -o $@ $< -lpthread -lrt
	ln -sf libnccl.so.2 $(dir $@)libcudart.so

## gpu-bundle: what deploy/gpu/gpu-check.sh needs on a GPU machine without Go
gpu-bundle: deps
	@mkdir -p build/gpu/include
	cp -r /usr/include/nlohmann build/gpu/include/
	$(GO) test -c -o build/gpu/trainer.test ./trainer
	$(GO) test -c -o build/gpu/nccl.test ./collective/nccl
	$(GO) build -o build/gpu/lavit-worker ./cmd/lavit-worker
	CGO_ENABLED=0 $(GO) build -o build/gpu/lavit-coord ./cmd/lavit-coord

## test: every test (unit, in-process cluster, process-level), with -race
test: build torch fake-nccl
	@rm -f test-out/it-learned.txt test-out/it-learned-bf16.txt
	LAVIT_BIN_DIR= LAVIT_TORCH_LIB=$(CURDIR)/$(SHIM) LAVIT_FAKE_NCCL=$(CURDIR)/$(FAKE_NCCL) LAVIT_REPORT_DIR=$(CURDIR)/test-out $(GO) test $(TESTFLAGS) ./...
	@echo; echo "MODEL.md's \"it learned\" checks (trainer.TestTinyLaVITLearns):"; cat test-out/it-learned.txt
	@echo; echo "The same in bf16 (trainer.TestTinyLaVITLearnsBF16):"; cat test-out/it-learned-bf16.txt

## demo: a coordinator and two workers join, are listed, and leave cleanly
demo: build torch
	@deploy/local/demo.sh

## bench: the benchmark table (control-plane throughput, failover, leader CPU)
bench: build torch fake-nccl
	@LAVIT_TORCH_LIB=$(CURDIR)/$(SHIM) LAVIT_FAKE_NCCL=$(CURDIR)/$(FAKE_NCCL) deploy/local/bench.sh

## lint: gofmt, go vet
lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN) demo-out bench-out build test-out
