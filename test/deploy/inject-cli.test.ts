// `openshell-ha-sidecar inject` as Helm runs it: a process with stdin and stdout. stdout carries the
// manifest and nothing else, remarks go to stderr, and the exit code tells Helm whether to go on.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { fixture, repoRoot } from './support/manifests.ts';
import { sidecarCommand } from '../../emulator/process.ts';

function runInject(args: string[], stdin: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const [node, ...entry] = sidecarCommand();
    const child = spawn(node as string, [...entry, 'inject', ...args], { cwd: repoRoot, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(stdin);
  });
}

describe('inject as a process', () => {
  it('writes only YAML to stdout and its remarks to stderr, exit 0', async () => {
    const input = fixture('head-ha.helm3-input.yaml');
    const r = await runInject(['--mode', 'native'], input);
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith('---\n# Source: helm-chart/templates/networkpolicy.yaml\n')).toBe(true);
    expect(parseAllDocuments(r.stdout, { version: '1.1' }).every((d) => d.errors.length === 0)).toBe(true);
    expect(r.stdout).not.toContain('openshell-ha inject:');
    expect(r.stderr).toMatch(/openshell-ha inject: injected ohs-sidecar \(native\) into Deployment\/openshell/);
  });

  it('empty stdin (Helm 3 --output-dir) gives empty stdout and exit 0', async () => {
    const r = await runInject([], '');
    expect(r).toMatchObject({ code: 0, stdout: '' });
  });

  it('input it cannot place: exit 1, nothing on stdout, the reason on stderr', async () => {
    const r = await runInject([], fixture('seed-ha.helm3-input.yaml').replace(/name: grpc/g, 'name: api'));
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/error: no Deployment\/StatefulSet with container ports named grpc and health/);
  });

  it('a bad flag: exit 2 before reading anything; --help prints the usage to stderr', async () => {
    const bad = await runInject(['--mode', 'sideways'], '');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--mode: expected one of native, native-alias, container/);
    const help = await runInject(['--help'], '');
    expect(help.code).toBe(0);
    expect(help.stdout).toBe('');
    expect(help.stderr).toMatch(/usage: openshell-ha-sidecar inject/);
  });
});
