// A small kubelet for the pod test: takes a pod template from a rendered (injected) manifest and
// runs its containers as processes inside the pod's network namespace, the way the kubelet would:
// env resolved in order (fieldRef, secretKeyRef, `$(VAR)`), volumes materialised into a per-pod
// directory (paths under a mountPath are mapped there, standing in for the mount namespace), native
// sidecars started first and gated by their startup probe, probes sent to the pod IP.
//
// The container images are stood in for by this repository's programs:
// - the sidecar image runs the Dockerfile's ENTRYPOINT (`node dist/main.js`, i.e. src/main.ts) with
//   the container's args and env and the image's ENV;
// - the gateway image runs the gateway emulator (2026-08). Its configuration is translated from what
//   the real gateway reads: OPENSHELL_BIND_ADDRESS / OPENSHELL_SERVER_PORT (or `--port`), the TOML
//   behind `--config` (health_bind_address, gateway_jwt key paths, gateway_id) and OPENSHELL_DB_URL.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { startProcess, sidecarCommand, gatewayEmulatorCommand, type ManagedProcess } from '../../../emulator/process.ts';
import { repoRoot } from './manifests.ts';

type Json = Record<string, unknown>;

export interface PodContext {
  readonly podName: string;
  readonly namespace: string;
  readonly podIp: string;
  /** The pod's network namespace. */
  readonly netns: string;
  /** Secrets and ConfigMaps by name: key → value (decoded). */
  readonly secrets: Readonly<Record<string, Readonly<Record<string, string>>>>;
  readonly configMaps: Readonly<Record<string, Readonly<Record<string, string>>>>;
  /** Where the pod's volumes are materialised. */
  readonly root: string;
  /** Which image is the sidecar's (the injector's --image). */
  readonly sidecarImage: string;
  readonly logLevel?: string;
}

export interface Probe {
  readonly path: string;
  readonly port: number;
  readonly periodSeconds: number;
  readonly timeoutSeconds: number;
  readonly failureThreshold: number;
}

export interface ResolvedContainer {
  readonly name: string;
  readonly image: string;
  /** An init container with restartPolicy Always (started first, runs beside the main containers). */
  readonly nativeSidecar: boolean;
  readonly command: readonly string[] | undefined;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly mounts: ReadonlyArray<{ readonly mountPath: string; readonly dir: string }>;
  readonly startupProbe: Probe | undefined;
  readonly readinessProbe: Probe | undefined;
}

function rec(v: unknown): Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {};
}
function arr(v: unknown): Json[] {
  return Array.isArray(v) ? (v as Json[]) : [];
}

/** Kubernetes `$(VAR)` expansion against variables defined earlier; `$$` escapes; unknown stay literal. */
export function expandVars(value: string, defined: Readonly<Record<string, string>>): string {
  return value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) => {
    if (m === '$$') return '$';
    return name !== undefined && name in defined ? (defined[name] as string) : m;
  });
}

function materialiseVolumes(podSpec: Json, ctx: PodContext): Map<string, string> {
  const dirs = new Map<string, string>();
  for (const v of arr(podSpec['volumes'])) {
    const name = String(v['name']);
    const dir = path.join(ctx.root, 'volumes', name);
    mkdirSync(dir, { recursive: true });
    dirs.set(name, dir);
    const src = rec(v['secret'])['secretName'] !== undefined ? ctx.secrets[String(rec(v['secret'])['secretName'])] : rec(v['configMap'])['name'] !== undefined ? ctx.configMaps[String(rec(v['configMap'])['name'])] : undefined;
    if (!src) continue;
    const items = arr(rec(v['secret'] ?? v['configMap'])['items']);
    const files = items.length > 0 ? items.map((i) => [String(i['key']), String(i['path'])] as const) : Object.keys(src).map((k) => [k, k] as const);
    for (const [key, file] of files) {
      const value = src[key];
      if (value !== undefined) writeFileSync(path.join(dir, file), value, { mode: 0o600 });
    }
  }
  return dirs;
}

function probeOf(c: Json, key: string): Probe | undefined {
  const p = rec(c[key]);
  const get = rec(p['httpGet']);
  if (get['path'] === undefined) return undefined;
  let port = get['port'];
  if (typeof port === 'string') port = arr(c['ports']).find((x) => x['name'] === port)?.['containerPort'];
  return {
    path: String(get['path']),
    port: Number(port),
    periodSeconds: Number(p['periodSeconds'] ?? 10),
    timeoutSeconds: Number(p['timeoutSeconds'] ?? 1),
    failureThreshold: Number(p['failureThreshold'] ?? 3),
  };
}

/** The pod's containers as the kubelet would start them: native sidecars first, then the main containers. */
export function resolvePod(podSpec: Json, ctx: PodContext): ResolvedContainer[] {
  const volumes = materialiseVolumes(podSpec, ctx);
  const resolve = (c: Json, nativeSidecar: boolean): ResolvedContainer => {
    const env: Record<string, string> = {};
    for (const e of arr(c['env'])) {
      const name = String(e['name']);
      if (typeof e['value'] === 'string') {
        env[name] = expandVars(e['value'], env);
        continue;
      }
      const from = rec(e['valueFrom']);
      const field = rec(from['fieldRef'])['fieldPath'];
      if (field !== undefined) {
        const fields: Record<string, string> = { 'metadata.name': ctx.podName, 'metadata.namespace': ctx.namespace, 'status.podIP': ctx.podIp };
        if (!(String(field) in fields)) throw new Error(`fieldRef ${String(field)} is not modelled`);
        env[name] = fields[String(field)] as string;
        continue;
      }
      const ref = rec(from['secretKeyRef']);
      const cmRef = rec(from['configMapKeyRef']);
      const source = ref['name'] !== undefined ? ctx.secrets[String(ref['name'])] : cmRef['name'] !== undefined ? ctx.configMaps[String(cmRef['name'])] : undefined;
      const sel = ref['name'] !== undefined ? ref : cmRef;
      const value = source?.[String(sel['key'])];
      if (value !== undefined) env[name] = value;
      else if (sel['optional'] !== true) throw new Error(`${String(c['name'])}: env ${name} refers to missing ${String(sel['name'])}/${String(sel['key'])} (the kubelet would not start it)`);
    }
    const mounts = arr(c['volumeMounts']).map((m) => {
      const dir = volumes.get(String(m['name']));
      if (!dir) throw new Error(`${String(c['name'])}: mount of unknown volume ${String(m['name'])}`);
      return { mountPath: String(m['mountPath']), dir };
    });
    return {
      name: String(c['name']),
      image: String(c['image']),
      nativeSidecar,
      command: Array.isArray(c['command']) ? (c['command'] as string[]) : undefined,
      args: arr(c['args']).map(String),
      env,
      mounts,
      startupProbe: probeOf(c, 'startupProbe'),
      readinessProbe: probeOf(c, 'readinessProbe'),
    };
  };
  const natives = arr(podSpec['initContainers']).filter((c) => c['restartPolicy'] === 'Always');
  if (arr(podSpec['initContainers']).length !== natives.length) throw new Error('run-to-completion init containers are not modelled');
  return [...natives.map((c) => resolve(c, true)), ...arr(podSpec['containers']).map((c) => resolve(c, false))];
}

/** A path inside the container → where its volume was materialised (the mount namespace's job). */
export function hostPath(p: string, mounts: ResolvedContainer['mounts']): string {
  const m = [...mounts].sort((a, b) => b.mountPath.length - a.mountPath.length).find((x) => p === x.mountPath || p.startsWith(`${x.mountPath.replace(/\/$/, '')}/`));
  return m ? path.join(m.dir, p.slice(m.mountPath.replace(/\/$/, '').length)) : p;
}

function mapPaths(env: Readonly<Record<string, string>>, mounts: ResolvedContainer['mounts']): Record<string, string> {
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v.startsWith('/') ? hostPath(v, mounts) : v]));
}

/** The Dockerfile's final stage: ENTRYPOINT and ENV, what `docker run` adds to a container spec. */
export function imageConfig(): { entrypoint: string[]; env: Record<string, string> } {
  const text = readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8');
  const finalStage = text.slice(text.lastIndexOf('\nFROM '));
  const entrypoint = JSON.parse(/^ENTRYPOINT\s+(\[.*\])$/m.exec(finalStage)?.[1] ?? '[]') as string[];
  const env: Record<string, string> = {};
  for (const m of finalStage.matchAll(/^ENV\s+([A-Z_][A-Z0-9_]*)=(\S+)$/gm)) env[m[1] as string] = m[2] as string;
  return { entrypoint, env };
}

function tomlValue(toml: string, key: string): string | undefined {
  return new RegExp(`^\\s*${key}\\s*=\\s*"([^"]*)"`, 'm').exec(toml)?.[1];
}

/** argv and environment of one container's process (what the container runtime would exec). */
export function processFor(c: ResolvedContainer, ctx: PodContext): { argv: string[]; env: Record<string, string> } {
  const base = { HOSTNAME: ctx.podName };
  if (c.image === ctx.sidecarImage) {
    const img = imageConfig();
    const cmd = [...(c.command ?? img.entrypoint), ...c.args];
    // `node [node flags] dist/main.js` in the image is the bundle of src/main.ts: run the same code
    // from source, with the same node flags.
    const main = cmd.indexOf('dist/main.js');
    const nodeFlags = cmd.slice(1, Math.max(1, main));
    if (cmd[0] !== 'node' || main < 1 || !nodeFlags.every((f) => f.startsWith('--'))) throw new Error(`unexpected sidecar entrypoint ${cmd.join(' ')}`);
    const [node, ...source] = sidecarCommand();
    return { argv: [node as string, ...nodeFlags, ...source, ...cmd.slice(main + 1)], env: { ...img.env, ...mapPaths(c.env, c.mounts), ...base } };
  }
  if (/\/openshell\/gateway:/.test(c.image)) {
    const args = [...c.args];
    const flag = (name: string): string | undefined => {
      const i = args.indexOf(name);
      return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1);
    };
    const configPath = flag('--config');
    const toml = configPath ? readFileSync(hostPath(configPath, c.mounts), 'utf8') : '';
    const bindHost = c.env['OPENSHELL_BIND_ADDRESS'] ?? (flag('--port') ? '0.0.0.0' : '127.0.0.1');
    const port = flag('--port') ?? c.env['OPENSHELL_SERVER_PORT'] ?? '8080';
    const health = tomlValue(toml, 'health_bind_address') ?? `0.0.0.0:${flag('--health-port') ?? '8081'}`;
    const jwtPublic = tomlValue(toml, 'public_key_path');
    const argv = [
      ...gatewayEmulatorCommand(),
      '--protocol', '2026-08',
      '--replica', ctx.podName,
      '--host', bindHost,
      '--port', port,
      '--health-host', health.slice(0, health.lastIndexOf(':')),
      '--health-port', health.slice(health.lastIndexOf(':') + 1),
      '--log-level', ctx.logLevel ?? 'warn',
      ...(jwtPublic ? ['--jwt-key-dir', path.dirname(hostPath(jwtPublic, c.mounts))] : []),
      ...(tomlValue(toml, 'gateway_id') ? ['--gateway-id', tomlValue(toml, 'gateway_id') as string] : []),
    ];
    return { argv, env: { ...mapPaths(c.env, c.mounts), ...base } };
  }
  throw new Error(`no stand-in for image ${c.image}`);
}

export function httpProbe(ip: string, p: Probe): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ host: ip, port: p.port, path: p.path, timeout: p.timeoutSeconds * 1000, agent: false }, (res) => {
      res.resume();
      resolve((res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 400);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

export interface RunningPod {
  readonly ctx: PodContext;
  readonly containers: ResolvedContainer[];
  readonly processes: Map<string, ManagedProcess>;
  /** One round of every container's readiness probe (the pod is Ready when all pass). */
  ready(): Promise<boolean>;
  stop(): Promise<void>;
}

/** Starts the pod: native sidecars first, each until its startup probe passes, then the main containers. */
export async function startPod(podSpec: Json, ctx: PodContext): Promise<RunningPod> {
  const containers = resolvePod(podSpec, ctx);
  const processes = new Map<string, ManagedProcess>();
  const pod: RunningPod = {
    ctx,
    containers,
    processes,
    async ready() {
      const results = await Promise.all(containers.map((c) => (c.readinessProbe ? httpProbe(ctx.podIp, c.readinessProbe) : Promise.resolve(true))));
      return results.every(Boolean) && [...processes.values()].every((p) => p.alive());
    },
    async stop() {
      // Reverse order: main containers, then the sidecars (the kubelet's order for native sidecars).
      for (const c of [...containers].reverse()) await processes.get(c.name)?.kill('SIGKILL');
    },
  };
  try {
    for (const c of containers) {
      const { argv, env } = processFor(c, ctx);
      const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
      const proc = await startProcess(`${ctx.podName}/${c.name}`, ['ip', 'netns', 'exec', ctx.netns, 'env', '-i', `PATH=${process.env.PATH ?? ''}`, ...envArgs, ...argv], { readyTimeoutMs: 30_000 });
      processes.set(c.name, proc);
      if (c.nativeSidecar && c.startupProbe) {
        const p = c.startupProbe;
        let ok = false;
        for (let i = 0; i < p.failureThreshold && !ok; i++) {
          ok = await httpProbe(ctx.podIp, p);
          if (!ok) await new Promise((r) => setTimeout(r, p.periodSeconds * 1000));
        }
        if (!ok) throw new Error(`${ctx.podName}/${c.name}: startup probe ${p.path} on :${p.port} never passed`);
      }
    }
  } catch (err) {
    await pod.stop();
    throw err;
  }
  return pod;
}
