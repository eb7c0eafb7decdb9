# tidegate — build, test, benchmark.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
PKGS    := ./...

.PHONY: all build test test-stress test-attack vet fmt-check unit bench bench-mem bench-micro demo clean

all: build

## build: the static sidecar binary and the Kubernetes injector in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/tidegate ./cmd/tidegate
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/tidegate-inject ./cmd/tidegate-inject

## test: what CI runs — vet, gofmt, and every test with the race detector
test: vet fmt-check
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

## test-stress: `make test`'s test command while test/burn keeps BURN_PROCS
## cores busy (default 1: on a 2-core machine, the other core), as on a
## loaded CI runner, to shake out tests that race the scheduler. The burner
## starts first and is killed when the target ends, however it ends (a
## failure, Ctrl-C, or a kill of make: it exits when its parent goes, and
## after 20 minutes a run, which is more than a run's 15m timeout). With
## STRESS_RUNS=N the suite runs N times, each printing
## "stress run i/N: ok (duration)", and the target stops at the first failure.
##   make test-stress STRESS_RUNS=5
STRESS_RUNS ?= 1
BURN_PROCS  ?= 1
test-stress: vet fmt-check
	$(GO) build -o bin/burn ./test/burn
	@case "$(STRESS_RUNS)" in ''|*[!0-9]*|0) \
		echo "STRESS_RUNS=$(STRESS_RUNS): want how many times to run the suite, a whole number from 1"; exit 2;; esac; \
	bin/burn --check --procs "$(BURN_PROCS)" || { echo "BURN_PROCS=$(BURN_PROCS): see above"; exit 2; }; \
	bin/burn --procs $(BURN_PROCS) --max $$(( $(STRESS_RUNS) * 20 ))m & burn=$$!; \
	trap 'kill $$burn 2>/dev/null; wait $$burn 2>/dev/null' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	echo "burning $(BURN_PROCS) core(s) (pid $$burn); $(STRESS_RUNS) run(s)"; \
	i=1; while [ $$i -le $(STRESS_RUNS) ]; do \
		start=$$(date +%s); \
		if ! $(GO) test -race -count=1 -timeout 15m $(PKGS); then \
			echo "stress run $$i/$(STRESS_RUNS): FAIL ($$(( $$(date +%s) - start ))s)"; exit 1; \
		fi; \
		echo "stress run $$i/$(STRESS_RUNS): ok ($$(( $$(date +%s) - start ))s)"; \
		i=$$((i + 1)); \
	done

## test-attack: the long forms of the hostile tests, with the race detector:
## 50 chaos drain cycles (TestChaosDrainCycles in test/e2e: mixed HTTP/1.1,
## h2c, gRPC and WebSocket load, a random SIGTERM, an app that crashes or
## answers slowly) and every Attack test under test/ (test/attack), with
## TIDEGATE_ATTACK_LONG=1. It prints the seed of the chaos run; replay it
## with TIDEGATE_CHAOS_SEED=N (and one cycle with TIDEGATE_CHAOS_ONLY=N).
##   make test-attack
test-attack:
	TIDEGATE_ATTACK_LONG=1 $(GO) test -race -count=1 -timeout 30m -p 1 -run 'Chaos|Attack' -v ./test/...

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## unit: quick tests without the race detector or end-to-end suite
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /test/e2e)

## bench: the harness of test/bench: direct vs tidegate vs nginx vs haproxy (and
## a plain ReverseProxy for gRPC) under wrk, h2load, gRPC and open-loop load,
## then tidegate's memory per idle connection; about 12 minutes. As root it
## apt-get installs wrk, nginx, haproxy and h2load if missing.
BENCH_FLAGS ?=
bench:
	$(GO) run ./test/bench -go $(GO) -out test/bench/results.md $(BENCH_FLAGS)

## bench-mem: only tidegate's idle RSS and its RSS per idle connection
bench-mem:
	$(GO) run ./test/bench -mode mem -go $(GO) -out test/bench/results-mem.md $(BENCH_FLAGS)

## bench-micro: data-path micro-benchmarks (ns/op, allocs/op)
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./proxy/

## demo: the built-in app behind the sidecar through a SIGTERM
demo:
	$(GO) run ./cmd/tidegate demo

clean:
	rm -rf bin
