// Test-only seam (loaded with `node --import`): makes the sidecar's ioredis clients connect through
// Redis Sentinel before the sidecar itself can be configured for it. Every `new Redis(url, opts)` in
// src/ gets ioredis's Sentinel options instead, parsed from OHS_TEST_SENTINEL_URL (the form proposed
// for --redis-url: redis+sentinel://h1:p1,h2:p2,…/<master>[/<db>]), keeping every other option the
// sidecar set (timeouts, retry strategy, offline queue, connection name). src/ is not changed.
import { register } from 'node:module';

register(new URL('./sentinel-hooks.mjs', import.meta.url).href, import.meta.url);
