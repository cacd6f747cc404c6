// The live page (/ui on the admin port) loads nothing from outside the sidecar: its HTML, stylesheet
// and script come from the same port, none of them names another origin, and every answer carries a
// Content-Security-Policy that would forbid another origin anyway. One embedded sidecar (in-memory
// ownership, no database) serves the page; no gateway is needed to serve it.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config/load.ts';
import { startSidecar, type Sidecar } from '../../../src/sidecar.ts';
import { freePort } from '../../helpers/own-redis.ts';

const EXPECTED_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Absolute (scheme://) or protocol-relative (//host) references: anything that is not this origin. */
const FOREIGN = /(?:\b[a-z][a-z0-9+.-]*:)?\/\/[^\s"'`)]/i;

let sidecar: Sidecar;
let base: string;

async function get(path: string): Promise<{ status: number; type: string | null; csp: string | null; body: string }> {
  const res = await fetch(`${base}${path}`);
  return { status: res.status, type: res.headers.get('content-type'), csp: res.headers.get('content-security-policy'), body: await res.text() };
}

/** The URLs an HTML document makes the browser load: src= and href= of any element. */
function htmlReferences(html: string): string[] {
  return [...html.matchAll(/\b(?:src|href)\s*=\s*["']?([^"'\s>]+)/gi)].map((m) => m[1] as string);
}

/** The URLs a stylesheet loads: @import (string or url()) and every url(). */
function cssReferences(css: string): string[] {
  const urls = [...css.matchAll(/url\(\s*["']?([^"')]+)["']?\s*\)/gi)].map((m) => m[1] as string);
  const imports = [...css.matchAll(/@import\s+["']([^"']+)["']/gi)].map((m) => m[1] as string);
  return [...urls, ...imports];
}

beforeAll(async () => {
  // Nothing listens on the gateway address: the page must not depend on it.
  const gatewayPort = await freePort();
  const config = loadConfig({
    argv: ['--replica-id', 'ui-solo', '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--gateway', `http://127.0.0.1:${gatewayPort}`],
    env: {},
  });
  expect(config.mode).toBe('embedded');
  sidecar = await startSidecar(config, pino({ level: 'silent' }));
  base = `http://127.0.0.1:${sidecar.ports.admin}`;
});

afterAll(async () => {
  await sidecar?.close();
});

describe('the live page is self-contained', () => {
  it('GET /ui references only its own stylesheet and script, by path on the same origin', async () => {
    const page = await get('/ui');
    expect(page.status).toBe(200);
    expect(page.type).toBe('text/html; charset=utf-8');
    expect(page.body).not.toMatch(/https?:\/\//i);
    const refs = htmlReferences(page.body);
    expect(refs.sort()).toEqual(['/ui/app.css', '/ui/app.js']);
    for (const ref of refs) {
      expect(ref, ref).toMatch(/^\/(?!\/)/);
      expect(new URL(ref, base).origin).toBe(base);
    }
    // The only <script> is the one loaded from /ui/app.js (no inline code, which the CSP would block);
    // the only stylesheet is /ui/app.css (no <style>, no style= attributes).
    expect([...page.body.matchAll(/<script\b[^>]*>/gi)].map((m) => m[0])).toEqual(['<script src="/ui/app.js">']);
    expect(page.body).toMatch(/<script src="\/ui\/app\.js"><\/script>/);
    expect([...page.body.matchAll(/<link\b[^>]*>/gi)].map((m) => m[0])).toEqual(['<link rel="stylesheet" href="/ui/app.css">']);
    expect(page.body).not.toMatch(/<style\b/i);
    expect(page.body).not.toMatch(/\sstyle\s*=/i);
    expect(page.body).not.toMatch(/\son[a-z]+\s*=/i);
    // /ui/ is the same document.
    expect((await get('/ui/')).body).toBe(page.body);
  });

  it('/ui/app.css and /ui/app.js name no other origin: no @import, url() or fetch elsewhere', async () => {
    const css = await get('/ui/app.css');
    expect(css.status).toBe(200);
    expect(css.type).toBe('text/css; charset=utf-8');
    expect(css.body.length).toBeGreaterThan(100);
    expect(css.body).not.toMatch(/https?:\/\//i);
    expect(css.body).not.toMatch(/@import/i);
    expect(css.body).not.toMatch(/@font-face/i);
    for (const ref of cssReferences(css.body)) expect(ref, ref).not.toMatch(FOREIGN);

    const js = await get('/ui/app.js');
    expect(js.status).toBe(200);
    expect(js.type).toBe('text/javascript; charset=utf-8');
    expect(js.body.length).toBeGreaterThan(100);
    expect(js.body).not.toMatch(/https?:\/\//i);
    expect(js.body).not.toMatch(/\bimport\s*\(|\bimport\s+[\w{*]|importScripts|new\s+WebSocket|EventSource/);
    // Every fetch is a path on this origin.
    const fetched = [...js.body.matchAll(/\bfetch\(\s*(['"`])([^'"`]*)\1/g)].map((m) => m[2] as string);
    expect(fetched).toEqual(['/v1/status']);
    expect(js.body.match(/\bfetch\(/g)).toHaveLength(fetched.length);
  });

  it('every /ui answer carries the CSP that allows this origin only', async () => {
    for (const path of ['/ui', '/ui/', '/ui/app.js', '/ui/app.css', '/ui/missing']) {
      const res = await get(path);
      expect(res.status, path).toBe(path === '/ui/missing' ? 404 : 200);
      expect(res.csp, path).toBe(EXPECTED_CSP);
    }
    const directives = new Map(EXPECTED_CSP.split(';').map((d) => d.trim().split(/\s+/)).map(([name, ...values]) => [name as string, values]));
    // Nothing by default; scripts, styles, fetches and images from this origin only; fonts fall back
    // to default-src 'none'.
    expect(directives.get('default-src')).toEqual(["'none'"]);
    for (const d of ['script-src', 'style-src', 'connect-src', 'img-src']) expect(directives.get(d), d).toEqual(["'self'"]);
    expect(directives.has('font-src')).toBe(false);
    expect(directives.get('base-uri')).toEqual(["'none'"]);
    expect(directives.get('form-action')).toEqual(["'none'"]);
    expect(directives.get('frame-ancestors')).toEqual(["'none'"]);
    expect(EXPECTED_CSP).not.toMatch(/unsafe-|\*|https?:|data:|blob:/);
    const page = await fetch(`${base}/ui`);
    await page.arrayBuffer();
    expect(page.headers.get('x-content-type-options')).toBe('nosniff');
    expect(page.headers.get('x-frame-options')).toBe('DENY');
    expect(page.headers.get('referrer-policy')).toBe('no-referrer');
  });
});
