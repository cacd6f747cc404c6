// Sandbox service subdomains (2026-08, reference §2.7): `<workspace>--<sandbox>[--<service>].<base>`.
// Parsed exactly as the gateway parses it, so the sidecar treats as a service request precisely
// what the gateway's service middleware would intercept, and nothing else.

/** The gateway's default `base_domains` (reference §2.7). */
export const DEFAULT_SERVICE_BASE_DOMAINS: readonly string[] = ['openshell.localhost'];

export interface ServiceHost {
  workspace: string;
  sandbox: string;
  /** '' for the sandbox's default endpoint. */
  service: string;
}

/** The parts of a Host (or `:authority`) value, or undefined when it is not a service host. */
export function parseServiceHost(host: string, baseDomains: readonly string[]): ServiceHost | undefined {
  // The port goes first, up to the first ':' (as upstream does).
  const colon = host.indexOf(':');
  const name = colon >= 0 ? host.slice(0, colon) : host;
  for (const base of baseDomains) {
    const suffix = `.${base}`;
    if (!name.endsWith(suffix)) continue;
    const encoded = name.slice(0, -suffix.length);
    const sep = encoded.indexOf('--');
    if (sep < 0) return undefined;
    const workspace = encoded.slice(0, sep);
    const rest = encoded.slice(sep + 2);
    if (workspace === '') return undefined;
    const sep2 = rest.indexOf('--');
    const sandbox = sep2 >= 0 ? rest.slice(0, sep2) : rest;
    const service = sep2 >= 0 ? rest.slice(sep2 + 2) : '';
    if (sep2 >= 0 && (service === '' || service.includes('--'))) return undefined;
    if (sandbox === '' || sandbox.includes('--')) return undefined;
    return { workspace, sandbox, service };
  }
  return undefined;
}

/** The `service_endpoint` row's name for a host: `sandbox` or `sandbox--service` (reference §2.7). */
export function endpointKey(host: ServiceHost): string {
  return host.service === '' ? host.sandbox : `${host.sandbox}--${host.service}`;
}
