# pkcs11-ha — see README.md. `make run` and `make test` install what they need (Debian packages) first.
SHELL := /bin/bash
GO ?= go
DEB_PACKAGES := softhsm2 p11-kit p11-kit-modules opensc openssl libengine-pkcs11-openssl gnutls-bin prometheus openjdk-17-jdk-headless systemd curl python3-pykcs11
# The modules of the workspace (go.work): the library, the sidecar, the deploy checks, the lab. See
# docs/ARCHITECTURE.md, "Modules". `go <cmd> work` runs over the packages of all of them.
MODULES := . cmd/hsm-ha-proxy deploy lab
# The test runner and the linter are pinned as `tool` directives in tools/go.mod, a module outside the workspace
# so that their dependencies take no part in the project's version selection. `go tool -n` builds the pinned
# tool into the build cache and prints its path (GOWORK=off: -modfile cannot be used in workspace mode); the
# tool itself then runs in the workspace.
TOOL = "$$(GOWORK=off $(GO) tool -modfile=tools/go.mod -n $(1))"
GOTESTSUM = $(call TOOL,gotestsum)
STATICCHECK = $(call TOOL,staticcheck)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# FUZZ runs fuzz target $(1) of package $(3) for $(2) inputs. It fails when nothing was fuzzed: `go test
# -fuzz` with no such target in the package passes silently (a target moved with its code would go unfuzzed).
FUZZ = echo "fuzz $(1) $(3) ($(2))" && out=$$($(GO) test -run '^$$' -fuzz '^$(1)$$' -fuzztime $(2) $(3) 2>&1); \
	status=$$?; echo "$$out" | tail -3; [ $$status = 0 ] || exit $$status; \
	echo "$$out" | grep -q '^fuzz: elapsed' || { echo "no fuzz target $(1) in $(3)"; exit 1; }

.PHONY: all deps test run bench chaos lint fmt tidy build clean

all: build

# Install the Debian packages when something is missing (apt-get update once), then the Go modules.
deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v p11-kit >/dev/null || missing="$$missing p11-kit"; \
	ls /usr/lib/*/pkcs11/p11-kit-client.so >/dev/null 2>&1 || missing="$$missing p11-kit-modules"; \
	command -v pkcs11-tool >/dev/null || missing="$$missing opensc"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	ls /usr/lib/*/engines-3/pkcs11.so >/dev/null 2>&1 || missing="$$missing libengine-pkcs11-openssl"; \
	command -v p11tool >/dev/null || missing="$$missing gnutls-bin"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jdk-headless"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	/usr/bin/python3 -c 'import PyKCS11' 2>/dev/null || missing="$$missing python3-pykcs11"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PACKAGES) >/dev/null; \
	fi
	@$(GO) mod download
	@GOWORK=off $(GO) mod download -modfile=tools/go.mod

build: deps
	$(GO) build work

# The gate: every package of the workspace under the race detector (unit tests, integration tests on real
# SoftHSM2 devices, the short chaos suite, the checks of deploy/: promtool, systemd-analyze, a real sidecar's
# metrics), then the fuzzers for a fixed count. Deterministic: no test asserts a wall-clock latency (timing
# bounds are make chaos's and make bench's, see docs/chaos.md), and none is re-run: a test that fails fails the
# gate. Well under 10 minutes on 2 cores.
# The pure packages (no device, no child process) run in parallel; the others, computed so that a new package
# is in the gate, two packages at a time (-p 2: each starts its own SoftHSM2 servers, and mostly waits on
# them; their deadlines are ones no healthy device misses on a loaded host, so a neighbour costs nothing).
# Not under the race detector: the chaos suite and the demo, end-to-end runs of the default attempt deadlines
# (50 ms local) under load, which the detector's slowdown would turn into timeouts on every device. The
# concurrency they drive is raced in the library's, the sidecar's and the harness's own tests.
PURE_PACKAGES := ./failover/... ./health/... ./pkcs11ha/sessionkey/ ./pkcs11ha/sidecarapi/ ./pkcs11ha/sidecarconfig/ \
	./cmd/hsm-ha-proxy/internal/p11rpc/... ./cmd/hsm-ha-proxy/internal/unixsock/ ./softhsm-test/leakcheck/ ./lab/timeline/ ./docs/
NORACE_PACKAGES := ./lab/chaos/ ./lab/cmd/hsm-ha-demo/
test: deps
	$(GO) vet work
	$(GOTESTSUM) --format standard-quiet --packages="$(PURE_PACKAGES)" -- -race -count=1 -timeout 5m
	other=$$($(GO) list $(PURE_PACKAGES) $(NORACE_PACKAGES)) && devices=$$($(GO) list work | grep -vxF "$$other") && \
		$(GOTESTSUM) --format standard-quiet --packages="$$(echo $$devices)" -- -race -p 2 -count=1 -timeout 9m
	$(GOTESTSUM) --format standard-quiet --packages="$(NORACE_PACKAGES)" -- -p 2 -count=1 -timeout 5m
	# A count, not a duration: a duration -fuzztime can fail a clean run with "context deadline exceeded"
	# (a race in Go's fuzz coordinator, go.dev/issue/75804, fixed in Go 1.27). ~10 s here.
	@$(call FUZZ,FuzzDecodeSignRequest,30000x,./cmd/hsm-ha-proxy/internal/proxy/)
	@$(call FUZZ,FuzzReadFrame,20000x,./cmd/hsm-ha-proxy/internal/p11rpc/)
	@$(call FUZZ,FuzzParseRequest,20000x,./cmd/hsm-ha-proxy/internal/p11rpc/)
	@$(call FUZZ,FuzzDecodeRun,20000x,./pkcs11ha/internal/devicebackend/)
	@$(call FUZZ,FuzzReadFrame,20000x,./pkcs11ha/internal/devicebackend/)

# The demo (lab/cmd/hsm-ha-demo): four SoftHSM2 devices in two regions behind the sidecar, with a scripted failover.
# Both binaries are built into one directory: the demo runs the hsm-ha-proxy beside it as its sidecar.
# Built, not `go run`, so that Ctrl-C reaches the demo itself; DEMO_ARGS adds flags (`--duration 30s`, `--no-failover`).
run: deps
	@bindir=$$(mktemp -d) && trap 'rm -rf "$$bindir"' EXIT && \
		$(GO) build -o "$$bindir/" ./cmd/hsm-ha-proxy ./lab/cmd/hsm-ha-demo && "$$bindir/hsm-ha-demo" $(DEMO_ARGS)

# Side-by-side figures against direct miekg/pkcs11 and crypto11; the last line is the BENCH summary.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./failover/
	$(GO) run ./lab/cmd/hsm-bench

# The long chaos run (>= 100,000 operations, minutes of flapping), the soak (>= 100 kill cycles) and 50 hot
# upgrades of the sidecar under load. Results table in chaos-results.txt.
chaos: deps
	# Live output and a log; the tests' own exit status decides (sh has no pipefail).
	{ CHAOS_LONG=1 $(GO) test -count=1 -timeout 90m -run 'TestChaos|TestSoak' -v ./lab/chaos/ && \
		CHAOS_LONG=1 $(GO) test -count=1 -timeout 30m -run '^(TestHotUpgrade|TestWorkerFaults)$$' -v ./cmd/hsm-ha-proxy/ && \
		CHAOS_LONG=1 $(GO) test -count=1 -timeout 20m -run '^(TestKeysRace|TestWorkerKillSoak)$$' -v ./pkcs11ha/; \
		echo $$? > chaos.status; } 2>&1 | tee chaos.log; status=$$(cat chaos.status); rm -f chaos.status; exit $$status

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet work
	# SA1019 is off: PKCS#1 v1.5 decryption is deprecated in Go 1.26 but a required, supported mechanism here.
	$(STATICCHECK) -checks 'inherit,-SA1019' work

fmt:
	gofmt -w $$(git ls-files '*.go')

# go mod tidy ignores go.work. deploy/ and lab/ reach the library through a replace directive, so they tidy as
# they are; cmd/hsm-ha-proxy must have none (`go install .../cmd/hsm-ha-proxy@version` refuses one), so it is
# tidied through a copy of its go.mod that has one.
tidy:
	for m in . deploy lab; do (cd $$m && $(GO) mod tidy) || exit 1; done
	cd cmd/hsm-ha-proxy && cp go.mod tidy.mod && cp go.sum tidy.sum && \
		$(GO) mod edit -modfile=tidy.mod -replace=github.com/pkcs11-ha/pkcs11-ha=../.. && \
		GOWORK=off $(GO) mod tidy -modfile=tidy.mod && \
		$(GO) mod edit -modfile=tidy.mod -dropreplace=github.com/pkcs11-ha/pkcs11-ha && \
		mv tidy.mod go.mod && mv tidy.sum go.sum
	cd tools && GOWORK=off $(GO) mod tidy

clean:
	rm -f chaos.log chaos-results.txt
