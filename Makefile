# openshell-ha-sidecar — developer entry points. `make test` is what CI runs.
.PHONY: install build typecheck lint test test-unit fuzz interop demo bench bench-proxy bench-budget bench-lookup bench-cells bench-ssh bench-scale bench-burst bench-ws drill drill-readiness drill-readiness-real clean

NODE_MODULES_STAMP := node_modules/.package-lock.json

install: $(NODE_MODULES_STAMP)

$(NODE_MODULES_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund

build: install
	npm run --silent build

typecheck: install
	npx tsc --noEmit -p tsconfig.json

lint: install
	npx eslint --max-warnings 0 .

# typecheck and lint (side by side) + every test; writes vitest's JSON report for .ci/run's summary
# line. The tests start the sidecar and the gateway emulator from the bundles `build` has just made
# (emulator/process.ts: sources through tsx instead when a source is newer than its bundle).
# test/interop runs under `make interop` only, so exported upstream binaries never turn this into a
# minutes-long run against real programs. Then the Node-sensitive part of the suite again on the
# image's Node (scripts/test-node-lts.sh; skipped when that Node is not installed); both passes run
# whatever the first one's outcome.
test: build
	@$(MAKE) --no-print-directory --output-sync=target -j2 typecheck lint
	@npx vitest run --exclude 'test/interop/**' --reporter=default --reporter=json --outputFile.json=.vitest-report.json; main=$$?; \
	bash scripts/test-node-lts.sh; lts=$$?; \
	[ $$main -eq 0 ] && [ $$lts -eq 0 ]

test-unit: install
	npx vitest run test/unit

# Property-based fuzzing of the pure parts (issue 10 item 6): every property runs FUZZ_RUNS cases
# (make test runs the same files with 1,000). Case counts per target are printed and written to
# .fuzz-report.jsonl. Replay a failure with OHS_FUZZ_SEED=<seed printed by fast-check>.
FUZZ_RUNS ?= 100000
fuzz: install
	rm -f .fuzz-report.jsonl
	OHS_FUZZ_RUNS=$(FUZZ_RUNS) OHS_FUZZ_REPORT=$(CURDIR)/.fuzz-report.jsonl npx vitest run test/fuzz --reporter=default
	node scripts/fuzz-summary.mjs .fuzz-report.jsonl

# The sidecar in front of upstream's real gateway, supervisor and CLI (docs/interop.md). Needs
# OPENSHELL_GATEWAY_BIN, OPENSHELL_SANDBOX_BIN and OPENSHELL_CLI_BIN; without them it prints one line and skips.
interop: install
	npx vitest run test/interop/real-gateway.test.ts --reporter=verbose

# A real local cluster: gateway emulators + sidecars + supervisors. Ctrl-C to stop.
demo: build
	node dist/emulator.js dev-cluster --replicas 3 --sandboxes 5

# The proxy hop itself, raw (CONNECT tunnel and ForwardTcp stream: direct, HAProxy when installed, one
# sidecar, two sidecars), then SSH end to end as a separate, labelled section. Not part of `make test`.
bench: bench-proxy bench-lookup bench-cells bench-ssh

bench-proxy: build
	node --import tsx bench/proxy.ts

# The same hop with each proxy process held to BUDGET cores (default 0.5) in a cgroup of its own, as a
# pod under resources.limits.cpu: a second hop then runs on its own CPU, as on another pod, instead of
# taking the client's and the gateway's (Linux, root; bench/results/cpu-budget.json).
BUDGET ?= 0.5
bench-budget: build
	BENCH_CPU_BUDGET=$(BUDGET) BENCH_PATHS=$${BENCH_PATHS:-direct,haproxy,haproxy2,node,node2,sidecar,sidecar2} node --import tsx bench/proxy.ts

# Owner lookup cache hit on the hot path (issue 13 item 4), real Postgres and Redis.
bench-lookup: install
	node --import tsx bench/owner-lookup.ts

# One stream's metric updates through prom-client and through the sidecar's cells (src/metrics/cells.ts).
bench-cells: install
	node --expose-gc --import tsx bench/metric-cells.ts

# One sidecar holding 10,000 supervisor sessions and 10,000 idle ForwardTcp streams: RSS, CPU,
# event-loop lag, routing p99, 1,000 forwarded opens/s for 30 s (bench/scale.ts; results in
# bench/results/scale.json). A few minutes; not part of `make bench`.
bench-scale: build
	node --no-allocation-site-pretenuring --import tsx bench/scale.ts

# A burst of 5,000 supervisors reaching one sidecar at once (a replica died and its sandboxes
# reconnect through the Service): time until every ownership row is written, claims that outwaited
# the Hello, claims per transaction (bench/claim-burst.ts; bench/results/claim-burst.json).
bench-burst: build
	node --import tsx bench/claim-burst.ts

# A /_ws_tunnel passthrough's message round trip, direct and through one sidecar (bench/ws-tunnel.ts).
bench-ws: build
	node --import tsx bench/ws-tunnel.ts

bench-ssh: build
	node --import tsx bench/run.ts

drill: build
	node --import tsx bench/drill.ts
	node --import tsx bench/rolling-drill.ts
	node --import tsx bench/readiness-drill.ts

# The 2026-08 readiness drill alone (reference §10): baseline without shadows, then 10 minutes of load
# with the lease holder stopped and killed (READINESS_DRILL_MINUTES, READINESS_SWEEP_SECS).
drill-readiness: build
	node --import tsx bench/readiness-drill.ts

# The same readiness drill against upstream's real gateway, supervisor and CLI (issue 14; docs/interop.md,
# results in bench/results/readiness-drill-real.json). Needs OPENSHELL_GATEWAY_BIN, OPENSHELL_SANDBOX_BIN
# and OPENSHELL_CLI_BIN like `make interop`; without them it prints one line and skips. Not part of `make drill`.
drill-readiness-real: install
	node --import tsx bench/real-readiness-drill.ts

clean:
	rm -rf dist coverage .vitest-report.json
