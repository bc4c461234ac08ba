# The two commands a newcomer needs are `make demo` and `make test` (see README).
GO      ?= go
BIN     := bin/pharos
PKGS    := ./...

.PHONY: build demo test test-unit test-e2e deps vet fmt fuzz bench chaos clean

# VERSION is what `pharos version` and pharos_build_info report.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/pharos

# deps installs what the tests and the demo run against (PostgreSQL 15 server
# binaries, the postgres user) when this machine lacks them.
deps:
	bash scripts/ensure-deps.sh

demo: deps build
	$(BIN) demo --dir demo-data

# test is what CI runs (.ci/run): vet, then every package with the race
# detector. The end-to-end tests through the proxy live in the same packages
# and talk to real PostgreSQL servers the harness starts.
test: deps
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 14m $(PKGS)

# fuzz runs every fuzz target (wire parsers, record parsers) for FUZZTIME.
FUZZTIME ?= 20s
FUZZPKGS := ./wire ./internal/pgauth ./internal/consolecmd ./internal/cluster ./haagent ./haagent/core
fuzz:
	for p in $(FUZZPKGS); do \
		for t in $$($(GO) test -list '^Fuzz' $$p | grep ^Fuzz); do \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
		done; \
	done

# bench: pharos side by side with direct, HAProxy and PgBouncer (select,
# write mix, connection setup at 1/16/64 clients), then failover outages
# through the proxy; writes bench/results/<stamp>/report.md and its SVG
# charts. Knobs: see scripts/bench.sh (e.g. DURATION=10s ROUNDS=5).
bench: deps build
	bash scripts/bench.sh

# chaos: a seeded, randomized schedule over the fault menu against a
# three-node cluster in synchronous mode, writes through the proxy; prints
# one line per fault kind and fails on any acknowledged write lost or any
# split brain. make test runs a short one (4 faults, seed 1).
DURATION ?= 30m
SEED     ?= 1
chaos: deps build
	$(GO) test -count=1 -timeout 0 -v -run TestChaos ./internal/chaos -args -chaos.duration=$(DURATION) -chaos.seed=$(SEED)

clean:
	rm -rf bin demo-data
