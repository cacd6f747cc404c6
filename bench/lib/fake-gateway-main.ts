// The fake gateway (bench/lib/fake-gateway.ts) in its own process, so its work lands on its own core
// as a real gateway's would. Prints {"event":"ready","port":N,"ports":[...]}; SIGTERM stops it.
// --extra-ports N: N more listeners (one per client of the gateway); --counts: open streams every second.
import { startFakeGateway } from './fake-gateway.ts';

const portArg = process.argv.indexOf('--port');
const extraArg = process.argv.indexOf('--extra-ports');
const gw = await startFakeGateway({ port: portArg > 0 ? Number(process.argv[portArg + 1]) : 0, extraPorts: extraArg > 0 ? Number(process.argv[extraArg + 1]) : 0 });
const parentPid = process.ppid;
const stop = (): void => void gw.close().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// The bench may die without signalling us; do not outlive it.
setInterval(() => {
  if (process.ppid !== parentPid) stop();
}, 1000).unref();
if (process.argv.includes('--counts')) {
  setInterval(() => console.log(JSON.stringify({ event: 'counts', ...gw.counts() })), 1000).unref();
}
console.log(JSON.stringify({ event: 'ready', port: gw.port, ports: gw.ports, pid: process.pid }));
