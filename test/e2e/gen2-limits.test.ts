// Cluster-wide ForwardTcp limits at the 2026-08 generation: the gateway caps SSH forwards at 3 per
// session token and 20 per sandbox *per process* (reference §2.3 HEAD); with three replicas the
// sidecars must hold those caps for the whole cluster, refuse with the gateway's own
// RESOURCE_EXHAUSTED message, and take no slot for a token the gateway would reject. The checks are
// shared with `make interop` (test/helpers/gen2-checks.ts), which runs them on the real gateway.
import { afterAll, beforeAll } from 'vitest';
import { limitChecks } from '../helpers/gen2-checks.ts';
import { EmulatorTarget } from '../helpers/emulator-target.ts';

let target: EmulatorTarget;

beforeAll(async () => {
  target = await EmulatorTarget.start('gen2_limits');
}, 90_000);

afterAll(async () => {
  await target?.close();
});

limitChecks(() => target, { label: 'emulator', report: (line) => console.log(`gen2 emulator: ${line}`) });
