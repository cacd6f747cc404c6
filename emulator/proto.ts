// One place that loads proto/openshell.proto for the emulators: grpc-js service
// definitions (through @grpc/proto-loader) and protobufjs types for the payloads
// the gateway persists in `objects.payload`.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

export const SERVICE_PATH = '/openshell.v1.OpenShell';
export const HEARTBEAT_INTERVAL_SECS = 15;

/** Gateway protocol generations the emulators speak (reference header table: seed and HEAD). */
export const PROTOCOLS = ['2026-04', '2026-08'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export function parseProtocol(value: string | undefined): Protocol {
  const v = value ?? '2026-04';
  if (!(PROTOCOLS as readonly string[]).includes(v)) throw new Error(`unknown protocol generation '${v}' (expected ${PROTOCOLS.join(' or ')})`);
  return v as Protocol;
}

/** SandboxPhase values (reference §3.2); 6–8 exist from the 2026-08 generation on. */
export const Phase = {
  UNSPECIFIED: 0,
  PROVISIONING: 1,
  READY: 2,
  ERROR: 3,
  DELETING: 4,
  UNKNOWN: 5,
  STOPPING: 6,
  STOPPED: 7,
  STARTING: 8,
} as const;
export type PhaseValue = (typeof Phase)[keyof typeof Phase];

/** Finds emulator/proto/openshell.proto walking up from this module (works from source and dist). */
export function protoPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    for (const candidate of [join(dir, 'proto', 'openshell.proto'), join(dir, 'emulator', 'proto', 'openshell.proto')]) {
      if (existsSync(candidate)) return candidate;
    }
    dir = dirname(dir);
  }
  throw new Error('proto/openshell.proto not found');
}

const loaderOptions: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: Number,
  defaults: true,
  oneofs: true,
  bytes: Buffer,
};

let cachedService: grpc.ServiceDefinition | undefined;
let cachedClientCtor: grpc.ServiceClientConstructor | undefined;
let cachedRoot: protobuf.Root | undefined;

function load(): void {
  if (cachedService) return;
  const def = protoLoader.loadSync(protoPath(), loaderOptions);
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    openshell: { v1: { OpenShell: grpc.ServiceClientConstructor } };
  };
  cachedClientCtor = pkg.openshell.v1.OpenShell;
  cachedService = pkg.openshell.v1.OpenShell.service;
}

/** grpc-js service definition for `openshell.v1.OpenShell`. */
export function openShellService(): grpc.ServiceDefinition {
  load();
  return cachedService as grpc.ServiceDefinition;
}

/** grpc-js client constructor for `openshell.v1.OpenShell`. */
export function openShellClient(): grpc.ServiceClientConstructor {
  load();
  return cachedClientCtor as grpc.ServiceClientConstructor;
}

function root(): protobuf.Root {
  // keepCase: field names as in the .proto (sandbox_id), matching proto-loader and the gateway.
  cachedRoot ??= new protobuf.Root().loadSync(protoPath(), { keepCase: true });
  return cachedRoot;
}

/** protobufjs type by short name, e.g. `messageType('Sandbox')`. */
export function messageType(name: string): protobuf.Type {
  return root().lookupType(`openshell.v1.${name}`);
}

export function encodeMessage(name: string, value: Record<string, unknown>): Buffer {
  const type = messageType(name);
  const err = type.verify(value);
  if (err) throw new Error(`invalid ${name}: ${err}`);
  return Buffer.from(type.encode(type.fromObject(value)).finish());
}

export function decodeMessage<T = Record<string, unknown>>(name: string, bytes: Uint8Array): T {
  const type = messageType(name);
  return type.toObject(type.decode(bytes), { longs: Number, enums: Number, defaults: true, bytes: Buffer }) as T;
}

// --- plain shapes of the messages the emulators use (proto-loader, keepCase) ---

export interface SupervisorMessage {
  payload?: 'hello' | 'heartbeat' | 'relay_open_result' | 'relay_close';
  hello?: { sandbox_id: string; instance_id: string } | null;
  heartbeat?: Record<string, never> | null;
  relay_open_result?: { channel_id: string; success: boolean; error: string } | null;
  relay_close?: { channel_id: string; reason: string } | null;
}

export interface GatewayMessage {
  payload?: 'session_accepted' | 'session_rejected' | 'heartbeat' | 'relay_open' | 'relay_close';
  session_accepted?: { session_id: string; heartbeat_interval_secs: number } | null;
  session_rejected?: { reason: string } | null;
  heartbeat?: Record<string, never> | null;
  relay_open?: RelayOpenMessage | null;
  relay_close?: { channel_id: string; reason: string } | null;
}

/** RelayOpen; `target`/`service_id` are set by the 2026-08 gateway only (absent target = SSH). */
export interface RelayOpenMessage {
  channel_id: string;
  target?: 'ssh' | 'tcp';
  ssh?: Record<string, never> | null;
  tcp?: { host: string; port: number } | null;
  service_id?: string;
}

export interface RelayFrame {
  payload?: 'init' | 'data';
  init?: { channel_id: string } | null;
  data?: Buffer | null;
}

export interface ExecSandboxEvent {
  payload?: 'stdout' | 'stderr' | 'exit';
  stdout?: { data: Buffer } | null;
  stderr?: { data: Buffer } | null;
  exit?: { exit_code: number } | null;
}

export interface SandboxLogLine {
  sandbox_id: string;
  timestamp_ms: number;
  level: string;
  target: string;
  message: string;
  source: string;
  fields: Record<string, string>;
}
