import { OhsError } from '../errors.ts';

export interface HostPort {
  /** Hostname or IP address, without brackets for IPv6. */
  host: string;
  /** 0..65535; 0 asks the OS for a free port. */
  port: number;
}

const PORT_RE = /^\d{1,5}$/;
// A hostname or IPv4 literal: letters, digits, dots, hyphens, underscores.
const NAME_RE = /^[A-Za-z0-9._-]+$/;
const IPV6_RE = /^[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?$/;

/**
 * Parses `host:port` and `[ipv6]:port`. A bare IPv6 address without brackets is rejected because
 * its last group cannot be told apart from a port.
 */
export function parseHostPort(value: string): HostPort {
  const fail = (why: string): never => {
    throw new OhsError('OHS_ERR_CONFIG', `invalid address '${value}': ${why}`);
  };
  let host: string;
  let portText: string;
  if (value.startsWith('[')) {
    const close = value.indexOf(']');
    if (close < 0) fail('missing ] after IPv6 address');
    host = value.slice(1, close);
    if (value[close + 1] !== ':') fail('expected :port after ]');
    portText = value.slice(close + 2);
    if (!IPV6_RE.test(host) || !host.includes(':')) fail('not an IPv6 address inside [ ]');
  } else {
    const colon = value.lastIndexOf(':');
    if (colon < 0) fail('expected host:port');
    host = value.slice(0, colon);
    portText = value.slice(colon + 1);
    if (host.includes(':')) fail('IPv6 addresses must be written as [addr]:port');
    if (!NAME_RE.test(host)) fail('invalid host');
  }
  if (!PORT_RE.test(portText)) fail('port must be a number');
  const port = Number(portText);
  if (port > 65535) fail('port must be 0..65535');
  return { host, port };
}

/** Inverse of parseHostPort: brackets IPv6 literals. */
export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

const WILDCARD_HOSTS: ReadonlySet<string> = new Set(['0.0.0.0', '::', '::0', '0:0:0:0:0:0:0:0']);

/** True for the wildcard bind addresses, which other machines cannot dial. */
export function isWildcardHost(host: string): boolean {
  return WILDCARD_HOSTS.has(host.toLowerCase());
}
