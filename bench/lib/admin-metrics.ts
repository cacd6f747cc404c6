// A sidecar's admin endpoint, read by the benches.
import http from 'node:http';

/** The sidecar's Prometheus text from its admin port. */
export function adminMetrics(adminPort: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: adminPort, path: '/metrics', timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy(new Error('admin /metrics timed out')));
    req.on('error', reject);
  });
}
