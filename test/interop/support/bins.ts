// Which upstream programs the interop suite runs: only what a person points it at, never built here.
import { accessSync, constants } from 'node:fs';

export const SKIP_LINE = 'skipped: no real gateway (set OPENSHELL_GATEWAY_BIN, OPENSHELL_SANDBOX_BIN, OPENSHELL_CLI_BIN)';

export interface UpstreamBins {
  gateway: string;
  sandbox: string;
  cli: string;
}

/** The three binaries from the environment, or undefined when any is unset. Throws when one is set but not executable. */
export function upstreamBins(env: NodeJS.ProcessEnv = process.env): UpstreamBins | undefined {
  const gateway = env.OPENSHELL_GATEWAY_BIN;
  const sandbox = env.OPENSHELL_SANDBOX_BIN;
  const cli = env.OPENSHELL_CLI_BIN;
  if (!gateway || !sandbox || !cli) return undefined;
  for (const [name, path] of [
    ['OPENSHELL_GATEWAY_BIN', gateway],
    ['OPENSHELL_SANDBOX_BIN', sandbox],
    ['OPENSHELL_CLI_BIN', cli],
  ] as const) {
    try {
      accessSync(path, constants.X_OK);
    } catch {
      throw new Error(`${name}=${path} is not an executable file`);
    }
  }
  return { gateway, sandbox, cli };
}
