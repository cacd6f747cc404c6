import { describe, expect, it } from 'vitest';
import { DEFAULT_SERVICE_BASE_DOMAINS, endpointKey, parseServiceHost } from '../../../src/classify/service-host.ts';

const BASES = DEFAULT_SERVICE_BASE_DOMAINS;

describe('parseServiceHost', () => {
  it('reads workspace and sandbox, with and without a service and a port', () => {
    expect(parseServiceHost('default--box.openshell.localhost', BASES)).toEqual({ workspace: 'default', sandbox: 'box', service: '' });
    expect(parseServiceHost('team--box--web.openshell.localhost:8080', BASES)).toEqual({ workspace: 'team', sandbox: 'box', service: 'web' });
  });

  it('uses every configured base domain', () => {
    expect(parseServiceHost('ws--b.apps.example.com', ['openshell.localhost', 'apps.example.com'])).toEqual({ workspace: 'ws', sandbox: 'b', service: '' });
  });

  it.each([
    'openshell.localhost',
    'box.openshell.localhost',
    '--box.openshell.localhost',
    'ws--.openshell.localhost',
    'ws--box--.openshell.localhost',
    'ws--box--web--x.openshell.localhost',
    'ws--box.other.example',
    'ws--box.openshell.localhostx',
    '',
  ])('%s is not a service host', (host) => {
    expect(parseServiceHost(host, BASES)).toBeUndefined();
  });

  it('names the endpoint row like the gateway does', () => {
    expect(endpointKey({ workspace: 'w', sandbox: 'box', service: '' })).toBe('box');
    expect(endpointKey({ workspace: 'w', sandbox: 'box', service: 'web' })).toBe('box--web');
  });
});
