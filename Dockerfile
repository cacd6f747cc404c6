# syntax=docker/dockerfile:1
# openshell-ha-sidecar image: multi-stage, pinned Node LTS, non-root, production dependencies only.
#   docker build -t openshell-ha-sidecar:0.1.0 .
# The runtime stage carries the bundled sidecar (dist/main.js, which also holds the `inject`
# post-renderer) and `npm ci --omit=dev` modules: no TypeScript, tests, emulators or dev tools.
# Node 24 is a supported LTS line (maintenance until 2028-04); the sidecar is tested on Node 20 and 24.
ARG NODE_IMAGE=node:24.21.0-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# No install scripts: nothing the sidecar bundles is native.
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json ./
COPY scripts/build.mjs ./scripts/build.mjs
COPY src ./src
RUN node scripts/build.mjs --sidecar-only

FROM ${NODE_IMAGE} AS deps
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts \
 && npm cache clean --force

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /src/node_modules ./node_modules
COPY --from=build /src/dist/main.js /src/dist/main.js.map ./dist/
COPY package.json ./
# uid 1000 (`node` in the Node images) is the gateway's uid too: key files of the TLS volumes the
# sidecar shares with the gateway are readable either way (fsGroup 1000).
USER 1000:1000
# public (clients and supervisors), peer (other replicas' sidecars), admin (health, readiness,
# metrics, drain)
EXPOSE 8080 8443 9091
# node is PID 1 and handles SIGTERM itself (drain, then exit); exec-form ENTRYPOINT so the signal reaches it.
STOPSIGNAL SIGTERM
# Liveness of the process on the admin port (OHS_ADMIN_LISTEN if set); compose checks /readyz itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "const p=(process.env.OHS_ADMIN_LISTEN||':9091').split(':').pop();fetch('http://127.0.0.1:'+p+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# The node flags are src/node-flags.ts's (a test keeps the two the same).
ENTRYPOINT ["node", "--initial-old-space-size=64", "--no-allocation-site-pretenuring", "--max-semi-space-size=16", "dist/main.js"]
