import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // 2-core machines: e2e files spawn many processes each, so keep file-level parallelism low.
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
  },
});
