# syntax=docker/dockerfile:1
# openshell-ha-sidecar: multi-stage build, runs as a non-root user.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts ./scripts
COPY src ./src
# The sidecar only: the emulators (emulator/) are a test double, not part of the image.
RUN node scripts/build.mjs --sidecar-only && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
COPY --chown=node:node package.json ./
USER node
# public (clients and supervisors), peer (other replicas), admin (health, readiness, metrics)
EXPOSE 8080 8443 9091
ENTRYPOINT ["node", "dist/main.js"]
