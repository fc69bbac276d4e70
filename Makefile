# lavit: see README.md. `make demo` and `make test` are the two entry points;
# both install what they need first (`make deps`, idempotent).

GO      ?= go
BIN     := bin
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# The race detector needs cgo; the coordinator itself is built without it.
TESTFLAGS ?= -race -count=1 -timeout 20m

.PHONY: all deps build test demo bench lint fmt clean

all: build

## deps: install what builds and tests need (idempotent; safe to re-run)
deps:
	@deploy/local/deps.sh

## build: bin/lavit-coord (CGO_ENABLED=0) and bin/lavit-worker
build: deps
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/lavit-coord ./cmd/lavit-coord
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/lavit-worker ./cmd/lavit-worker

## test: every test (unit, in-process cluster, process-level), with -race
test: build
	LAVIT_BIN_DIR= $(GO) test $(TESTFLAGS) ./...

## demo: a coordinator and two workers join, are listed, and leave cleanly
demo: build
	@deploy/local/demo.sh

## bench: the benchmark table (control-plane throughput, failover, leader CPU)
bench: build
	@deploy/local/bench.sh

## lint: gofmt, go vet
lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN) demo-out
