# gridnet build, test and demo targets. `make demo` and `make test` are the
# two commands a fresh machine needs (see README.md).

SHELL     := /bin/bash
GO        ?= go
BIN       ?= bin/gridnet
PKGS      ?= ./...
# Fuzz time per target for `make fuzz`.
FUZZTIME  ?= 20s
# Test timeout: the integration fabrics and namespace tests are the slowest.
TESTTIMEOUT ?= 30m

.PHONY: bench-netns bench-tuning bench-flood bench-gossip bench-proxy all build test test-short vet bench fuzz demo clean

all: build

build:
	$(GO) build -o $(BIN) .

vet:
	$(GO) vet $(PKGS)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

# The full suite under the race detector; root-only tests (network
# namespaces, kernel TUN) run when the user is root and skip with a reason
# otherwise.
test: vet
	$(GO) test -race -count=1 -timeout $(TESTTIMEOUT) $(PKGS)
	# Allocation guards: the race detector changes allocation counts, so the
	# per-packet zero-allocation tests run once more without it.
	$(GO) test -count=1 -run 'ZeroAlloc|Alloc' ./stack ./policy
	# Without -race: 1 GiB through forward, and 1,000 concurrent
	# connections through the SOCKS5 proxy (200 under -race).
	$(GO) test -count=1 -run 'ForwardCarriesLargeTransferIntact|ProxyManyConcurrentConnections' ./node
	# Without -race: 50 members joining one gossip seed at once.
	$(GO) test -count=1 -run 'JoinOneSeedConverges' ./discovery
	# Without -race: the flood tests (pushback before decryption needs a
	# normal build's speed to engage) and the 50-node gossip fabric, which
	# -race makes too slow. They assert behaviour, not speed: the figures
	# come from `make bench` and `make bench-gossip`.
	$(GO) test -count=1 -run 'Flood|GossipFabric/50' -v ./integration | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|flood_test|flood_proc_test|gossip_test'; exit $${PIPESTATUS[0]}

test-short: vet
	$(GO) test -short -count=1 $(PKGS)

# Micro-benchmarks run for the usual benchmark time; the fabric-level ones
# (discovery, integration) start whole fabrics and run once each.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./vault ./overlay/... ./stack ./policy
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 1x -count 1 -timeout 30m ./discovery ./integration
	$(GO) test -run '^$$' -bench NewcomerDuringIdleStreams -benchtime 10x -count 1 -timeout 10m ./node
	$(MAKE) bench-proxy

# Userspace mode for unmodified programs: bulk TCP through the SOCKS5 proxy
# and through a forward entry against a direct Dial on the same pair (three
# alternating rounds, 1 GiB each unless GRIDNET_BENCH_BYTES says), and
# connection setup through the proxy (rate, added p50/p99 latency).
bench-proxy:
	$(GO) test -run '^$$' -bench 'RelayBulk|ProxyConnect' -benchtime 1x -count 1 -timeout 30m ./node

# Kernel TUN mode against raw wireguard-go on the same topology: two
# network namespaces on a veth, iperf3 with one and four streams, MTU 1420,
# rounds alternating (GRIDNET_BENCH_SECONDS per round, default 8;
# GRIDNET_BENCH_ROUNDS per tunnel, default 3). Needs root, iproute2, iperf3.
bench-netns:
	$(GO) test -run '^$$' -bench NetnsKernelThroughput -benchtime 1x -count 1 -timeout 30m -v ./integration

# The userspace stack's settings against its defaults (congestion control,
# RACK, queue length, batch size), unpoliced and under a per-peer packet
# cap, GRIDNET_TUNING_ROUNDS rounds (default 3); docs/TUNING.md.
bench-tuning:
	$(GO) test -run '^$$' -bench StackTuning -benchtime 1x -count 1 -timeout 60m -v ./integration

# The flood benchmarks alone: the share of throughput an honest peer keeps
# while another peer floods the victim (in one process, and with the
# attacker on its own CPU), three runs each.
bench-flood:
	$(GO) test -run '^$$' -bench Flood -benchtime 1x -count 3 -timeout 30m ./integration

# The gossip fabric at 10, 50 and 100 nodes, worst of five runs each, with
# memberlist alone measured in the same runs.
bench-gossip:
	GRIDNET_BENCH_NODES=10,50,100 $(GO) test -run '^$$' -bench GossipFabric -benchtime 5x -count 1 -timeout 60m ./integration

# Run every fuzz target for FUZZTIME each (go test runs one target at a time).
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t"; \
	    $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

demo: build
	./$(BIN) demo

clean:
	rm -rf bin
