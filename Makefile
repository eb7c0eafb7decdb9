# tidegate — build, test, benchmark.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
PKGS    := ./...

.PHONY: all build test vet fmt-check unit bench demo clean

all: build

## build: static sidecar binary in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/tidegate ./cmd/tidegate

## test: what CI runs — vet, gofmt, and every test with the race detector
test: vet fmt-check
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## unit: quick tests without the race detector or end-to-end suite
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /test/e2e)

## bench: data-path micro-benchmarks (ns/op, allocs/op)
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./proxy/

## demo: the built-in app behind the sidecar through a SIGTERM
demo:
	$(GO) run ./cmd/tidegate demo

clean:
	rm -rf bin
