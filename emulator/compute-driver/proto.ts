// Loads our compute_driver.proto for grpc-js, and the TypeScript shapes of the messages the driver
// handles (proto-loader with keepCase: field names as in the .proto).
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export const COMPUTE_DRIVER_SERVICE = 'openshell.compute.v1.ComputeDriver';

export interface DriverCondition {
  type: string;
  status: string;
  reason: string;
  message: string;
  last_transition_time: string;
}

export interface DriverSandboxStatus {
  sandbox_name: string;
  instance_id: string;
  agent_fd: string;
  sandbox_fd: string;
  conditions: DriverCondition[];
  deleting: boolean;
}

export interface DriverSandboxTemplate {
  image: string;
  agent_socket_path: string;
  labels: Record<string, string>;
  environment: Record<string, string>;
  resources: unknown;
  platform_config: unknown;
  driver_config: unknown;
}

export interface DriverSandboxSpec {
  log_level: string;
  environment: Record<string, string>;
  template: DriverSandboxTemplate | null;
  resource_requirements: { gpu: { count?: number | null } | null } | null;
  sandbox_token: string;
  command: string[];
  tty: boolean;
}

export interface DriverSandbox {
  id: string;
  name: string;
  namespace: string;
  spec: DriverSandboxSpec | null;
  status: DriverSandboxStatus | null;
  workspace: string;
}

export interface DriverPlatformEvent {
  timestamp_ms: number;
  source: string;
  type: string;
  reason: string;
  message: string;
  metadata: Record<string, string>;
}

export type WatchSandboxesEvent =
  | { sandbox: { sandbox: DriverSandbox } }
  | { deleted: { sandbox_id: string } }
  | { platform_event: { sandbox_id: string; event: DriverPlatformEvent } };

export interface SandboxRef {
  sandbox_id: string;
  sandbox_name: string;
}

/** Finds compute-driver/proto/compute_driver.proto from this module (works from source and from dist/). */
export function computeDriverProtoPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    for (const candidate of [
      join(dir, 'proto', 'compute_driver.proto'),
      join(dir, 'compute-driver', 'proto', 'compute_driver.proto'),
      join(dir, 'emulator', 'compute-driver', 'proto', 'compute_driver.proto'),
    ]) {
      if (existsSync(candidate)) return candidate;
    }
    dir = dirname(dir);
  }
  throw new Error('compute-driver/proto/compute_driver.proto not found');
}

let cached: grpc.ServiceClientConstructor | undefined;

/** grpc-js client constructor of the service; `.service` is the server-side definition. */
export function computeDriverClient(): grpc.ServiceClientConstructor {
  if (cached) return cached;
  const def = protoLoader.loadSync(computeDriverProtoPath(), {
    keepCase: true,
    longs: Number,
    enums: Number,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    openshell: { compute: { v1: { ComputeDriver: grpc.ServiceClientConstructor } } };
  };
  cached = pkg.openshell.compute.v1.ComputeDriver;
  return cached;
}
