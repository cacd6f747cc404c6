// The Dockerfile, without a container engine: hadolint, the structure of the stages, the production
// bundle's inputs (no emulator, test or dev-only package reaches the runtime stage), and the
// HEALTHCHECK command run for real, with the image's Node LTS, against a running sidecar.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import { startProcess, sidecarCommand } from '../../emulator/process.ts';
import { NODE_FLAGS } from '../../src/node-flags.ts';
import { freePort } from '../helpers/own-redis.ts';
import { repoRoot } from './support/manifests.ts';
import { hadolint, nodeLts, skipUnless } from './support/tools.ts';

const dockerfile = readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8');
const lines = dockerfile.replace(/\\\n\s*/g, ' ').split('\n').filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
const HADOLINT = hadolint();
const NODE_LTS = nodeLts();

interface Stage {
  from: string;
  name: string | undefined;
  lines: string[];
}

function stages(): Stage[] {
  const out: Stage[] = [];
  for (const l of lines) {
    const m = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(l);
    if (m) out.push({ from: m[1] as string, name: m[2], lines: [] });
    else out.at(-1)?.lines.push(l);
  }
  return out;
}

function healthcheckArgv(): string[] {
  const hc = lines.find((l) => l.startsWith('HEALTHCHECK'));
  const json = /CMD\s+(\[.*\])\s*$/.exec(hc ?? '')?.[1];
  if (!json) throw new Error('no exec-form HEALTHCHECK CMD');
  return JSON.parse(json) as string[];
}

describe('Dockerfile', () => {
  it.skipIf(skipUnless(HADOLINT))('hadolint finds nothing', () => {
    const r = spawnSync(HADOLINT.bin as string, ['--no-color', path.join(repoRoot, 'Dockerfile')], { encoding: 'utf8' });
    console.log(`hadolint ${spawnSync(HADOLINT.bin as string, ['--version'], { encoding: 'utf8' }).stdout.trim()}: ${r.stdout.trim() || 'no findings'} (exit ${r.status})`);
    expect(r.stdout).toBe('');
    expect(r.status).toBe(0);
  });

  it('multi-stage on one pinned Node LTS; the runtime stage is non-root with production modules and the bundle only', () => {
    const arg = /^ARG NODE_IMAGE=(\S+)$/m.exec(dockerfile)?.[1];
    expect(arg).toMatch(/^node:(2[2468])\.\d+\.\d+-[a-z]+-slim$/);
    const st = stages();
    expect(st.map((s) => s.name)).toEqual(['build', 'deps', undefined]);
    expect(st.every((s) => s.from === '${NODE_IMAGE}')).toBe(true);
    const deps = st[1] as Stage;
    expect(deps.lines.join('\n')).toMatch(/npm ci --omit=dev/);
    const runtime = st[2] as Stage;
    const copies = runtime.lines.filter((l) => l.startsWith('COPY'));
    expect(copies).toEqual(['COPY --from=deps /src/node_modules ./node_modules', 'COPY --from=build /src/dist/main.js /src/dist/main.js.map ./dist/', 'COPY package.json ./']);
    expect(runtime.lines).toContain('USER 1000:1000');
    expect(runtime.lines).toContain(`ENTRYPOINT ${JSON.stringify(['node', ...NODE_FLAGS, 'dist/main.js']).replace(/","/g, '", "')}`);
    expect(runtime.lines).toContain('STOPSIGNAL SIGTERM');
    expect(runtime.lines.some((l) => l.startsWith('RUN'))).toBe(false);
    const ignore = readFileSync(path.join(repoRoot, '.dockerignore'), 'utf8');
    for (const p of ['test', 'emulator', 'node_modules', 'dist', '.git']) expect(ignore.split('\n')).toContain(p);
  });

  it('the image bundle (src/main.ts) pulls in no emulator or test code and only production dependencies', async () => {
    const result = await build({
      entryPoints: [path.join(repoRoot, 'src/main.ts')],
      bundle: true,
      platform: 'node',
      format: 'esm',
      packages: 'external',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs.filter((i) => !i.startsWith('src/'))).toEqual([]);
    const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    const imported = new Set<string>();
    for (const out of Object.values(result.metafile.outputs)) {
      for (const imp of out.imports) {
        if (!imp.external || imp.path.startsWith('node:')) continue;
        imported.add(imp.path.startsWith('@') ? imp.path.split('/').slice(0, 2).join('/') : (imp.path.split('/')[0] as string));
      }
    }
    const notProd = [...imported].filter((p) => !(p in pkg.dependencies));
    console.log(`image bundle: ${inputs.length} source files, packages ${[...imported].sort().join(', ')}`);
    expect(notProd).toEqual([]);
  });

  it.skipIf(skipUnless(NODE_LTS))('the HEALTHCHECK command, run with the image’s Node LTS, passes against a live sidecar and fails once it is gone', async () => {
    const node = NODE_LTS.bin as string;
    const adminPort = await freePort();
    const env = { OHS_ADMIN_LISTEN: `127.0.0.1:${adminPort}` };
    // The sidecar itself on the image's Node version (embedded mode: no database needed).
    const sidecar = await startProcess('sidecar-node-lts', [node, ...sidecarCommand().slice(1), '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0'], { env });
    const check = (): Promise<number | null> =>
      new Promise((resolve) => {
        const [cmd, ...args] = healthcheckArgv();
        expect(cmd).toBe('node');
        const c = spawn(node, args, { env: { ...process.env, ...env }, stdio: 'ignore' });
        c.on('close', (code) => resolve(code));
      });
    try {
      expect(await check()).toBe(0);
    } finally {
      await sidecar.kill('SIGTERM');
    }
    expect(await check()).toBe(1);
    console.log(`HEALTHCHECK with ${spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim()}: 0 while the sidecar runs, 1 after it stopped`);
  });
});
