import { describe, expect, it } from 'vitest';
import {
  H2_PREFACE,
  classifyGrpcPath,
  classifyHttp1,
  detectPreface,
  isGrpcContentType,
  ROUTE_POLICY,
  stripInternalHeaders,
} from '../../../src/classify/classify.ts';
import type { TrafficClass } from '../../../src/classify/classify.ts';

describe('classifyGrpcPath', () => {
  it.each<[string, TrafficClass]>([
    ['ConnectSupervisor', 'supervisor-control'],
    ['RelayStream', 'supervisor-relay'],
    ['ExecSandbox', 'exec'],
    ['PushSandboxLogs', 'logs-push'],
    ['GetSandboxLogs', 'logs-get'],
    ['WatchSandbox', 'watch'],
    ['ForwardTcp', 'tcp-forward'],
    ['ExecSandboxInteractive', 'exec'],
    ['StopSandbox', 'sandbox-stop'],
    ['StartSandbox', 'sandbox-affine'],
    ['DeleteSandbox', 'sandbox-affine'],
    ['ReportMainProcessExit', 'sandbox-affine'],
    ['ReportPolicyStatus', 'sandbox-affine'],
    ['UpdateConfig', 'sandbox-affine'],
  ])('routes %s as %s', (method, cls) => {
    expect(classifyGrpcPath(`/openshell.v1.OpenShell/${method}`)).toBe(cls);
    expect(ROUTE_POLICY[cls]).not.toBe('local');
  });

  it.each([
    '/openshell.v1.OpenShell/CreateSshSession',
    '/openshell.v1.OpenShell/GetSandbox',
    '/openshell.v1.OpenShell/Health',
    '/openshell.inference.v1.Inference/GetInferenceBundle',
    '/openshell.v1.OpenShell/ListSandboxes',
    '/openshell.v1.OpenShell/PeerRelay',
    '/openshell.v1.OpenShell/connectsupervisor',
    '/openshell.v1.OpenShell/ConnectSupervisor/',
    '/other.v1.OpenShell/ExecSandbox',
    '',
  ])('sends %s to the local gateway untouched', (path) => {
    expect(classifyGrpcPath(path)).toBe('passthrough');
  });

  it('routes only passthrough locally, and never holds the softer sandbox-affine calls', () => {
    expect(ROUTE_POLICY.passthrough).toBe('local');
    expect(ROUTE_POLICY['sandbox-affine']).toBe('affine');
    expect(ROUTE_POLICY['tcp-forward']).toBe('owner');
    expect(ROUTE_POLICY.watch).toBe('owner-rehome');
  });
});

describe('classifyHttp1', () => {
  it('recognises the CLI ssh tunnel request', () => {
    expect(classifyHttp1('CONNECT', '/connect/ssh')).toBe('ssh-tunnel');
  });

  it.each<[string, string]>([
    ['GET', '/connect/ssh'],
    ['POST', '/connect/ssh'],
    ['CONNECT', 'sandbox.example:22'],
    ['CONNECT', '/connect/ssh?x=1'],
    ['CONNECT', '/connect/ssh/'],
    ['CONNECT', '/connect/SSH'],
    ['connect', '/connect/ssh'],
    ['GET', '/_ws_tunnel'],
  ])('%s %s is passthrough', (method, target) => {
    expect(classifyHttp1(method, target)).toBe('passthrough');
  });

  it('honours a non-default ssh connect path', () => {
    expect(classifyHttp1('CONNECT', '/tunnel', '/tunnel')).toBe('ssh-tunnel');
    expect(classifyHttp1('CONNECT', '/connect/ssh', '/tunnel')).toBe('passthrough');
  });
});

describe('isGrpcContentType', () => {
  it.each(['application/grpc', 'application/grpc+proto', 'application/grpc; charset=utf-8', 'Application/GRPC'])(
    '%s is gRPC',
    (ct) => expect(isGrpcContentType(ct)).toBe(true),
  );
  it.each([undefined, '', 'application/json', 'text/plain', 'application/gr'])('%s is not gRPC', (ct) =>
    expect(isGrpcContentType(ct)).toBe(false),
  );
});

describe('detectPreface', () => {
  const ascii = (s: string) => Buffer.from(s, 'latin1');

  it('recognises the full HTTP/2 preface, with or without following frames', () => {
    expect(detectPreface(H2_PREFACE)).toBe('h2');
    expect(detectPreface(Buffer.concat([H2_PREFACE, Buffer.from([0, 0, 0, 4, 0])]))).toBe('h2');
  });

  it('asks for more bytes on every partial HTTP/2 preface', () => {
    for (let n = 1; n < H2_PREFACE.length; n++) {
      expect(detectPreface(H2_PREFACE.subarray(0, n)), `prefix of ${n} bytes`).toBe('need-more');
    }
  });

  it('asks for more bytes when nothing arrived yet', () => {
    expect(detectPreface(Buffer.alloc(0))).toBe('need-more');
  });

  it('recognises a TLS ClientHello record', () => {
    expect(detectPreface(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]))).toBe('tls');
    expect(detectPreface(Buffer.from([0x16, 0x03]))).toBe('tls');
    expect(detectPreface(Buffer.from([0x16]))).toBe('need-more');
    expect(detectPreface(Buffer.from([0x16, 0x02]))).toBe('garbage');
  });

  it('recognises HTTP/1.1 request lines', () => {
    expect(detectPreface(ascii('CONNECT /connect/ssh HTTP/1.1\r\n'))).toBe('http1');
    expect(detectPreface(ascii('GET / HTTP/1.1\r\n'))).toBe('http1');
    expect(detectPreface(ascii('GET '))).toBe('http1');
    expect(detectPreface(ascii('PRI * HTTP/1.1\r\n'))).toBe('http1');
  });

  it('asks for more bytes while the method token is still arriving', () => {
    expect(detectPreface(ascii('G'))).toBe('need-more');
    expect(detectPreface(ascii('CONNEC'))).toBe('need-more');
  });

  it('calls anything else garbage', () => {
    expect(detectPreface(ascii('get / HTTP/1.1'))).toBe('garbage');
    expect(detectPreface(ascii(' GET /'))).toBe('garbage');
    expect(detectPreface(ascii('GET\t/'))).toBe('garbage');
    expect(detectPreface(Buffer.from([0x00, 0x00, 0x12, 0x04]))).toBe('garbage');
    expect(detectPreface(ascii('ABCDEFGHIJKLMNOPQRSTUVWXYZ'))).toBe('garbage');
    expect(detectPreface(ascii('SSH-2.0-OpenSSH_9.6\r\n'))).toBe('garbage');
  });
});

describe('stripInternalHeaders', () => {
  it('removes x-ohs-* headers in any case and returns them', () => {
    const headers: Record<string, string | string[] | undefined> = {
      ':path': '/openshell.v1.OpenShell/ExecSandbox',
      'content-type': 'application/grpc',
      'x-ohs-hop': '1',
      'X-OHS-Peer-Auth': 'forged',
      'x-ohs-epoch': ['1', '2'],
      'x-sandbox-id': 'sb-1',
      'x-ohsx': 'not ours',
    };
    const removed = stripInternalHeaders(headers);
    expect(removed).toEqual({ 'x-ohs-hop': '1', 'X-OHS-Peer-Auth': 'forged', 'x-ohs-epoch': ['1', '2'] });
    expect(headers).toEqual({
      ':path': '/openshell.v1.OpenShell/ExecSandbox',
      'content-type': 'application/grpc',
      'x-sandbox-id': 'sb-1',
      'x-ohsx': 'not ours',
    });
  });

  it('leaves requests without internal headers alone', () => {
    const headers = { host: 'gw', authorization: 'Bearer t' };
    expect(stripInternalHeaders(headers)).toEqual({});
    expect(headers).toEqual({ host: 'gw', authorization: 'Bearer t' });
  });

  it('works on null-prototype header objects like node:http2 produces', () => {
    const headers: Record<string, string> = Object.assign(Object.create(null) as Record<string, string>, {
      'x-ohs-hop': '2',
      a: 'b',
    });
    expect(stripInternalHeaders(headers)).toEqual({ 'x-ohs-hop': '2' });
    expect(Object.keys(headers)).toEqual(['a']);
  });
});
