// Bundles our own code; npm packages stay external (installed by `npm ci`).
//   dist/main.js      the sidecar (all the production image carries)
//   dist/emulator.js  gateway/supervisor emulators and the dev cluster (skipped with --sidecar-only)
import { build } from 'esbuild';

const sidecarOnly = process.argv.includes('--sidecar-only');
const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  packages: 'external',
  sourcemap: true,
  banner: { js: '#!/usr/bin/env node' },
};

await build({ ...common, entryPoints: ['src/main.ts'], outfile: 'dist/main.js' });
if (!sidecarOnly) await build({ ...common, entryPoints: ['emulator/main.ts'], outfile: 'dist/emulator.js' });
