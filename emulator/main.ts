// openshell-emulator: the gateway and supervisor emulators and the local dev cluster, a product of
// their own (a test double for anyone fronting an OpenShell gateway). The sidecar never imports
// this folder, and its production build and image do not carry it.
const USAGE = `usage: openshell-emulator gateway [--database-url url] [--port N] [--health-port N] [--replica name] [--protocol 2026-04|2026-08] [--jwt-key-dir DIR]
           [--replica-id ID] [--lease-ttl-secs S] [--lease-renew-secs S] [--lease-acquire-secs S] [--reconcile-interval-secs S] [--session-wait-secs S] ...
       openshell-emulator dev-cluster [--replicas N] [--sandboxes M] [--protocol 2026-04|2026-08] [--json]
       openshell-emulator compute-driver --socket PATH --endpoint URL [--supervisor-bin PATH] ... (--help)
       openshell-emulator balancer --listen HOST:PORT --backend HOST:PORT [--backend HOST:PORT ...]`;

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  switch (cmd) {
    case 'gateway': {
      const { runGatewayEmulator } = await import('./gateway/cli.ts');
      await runGatewayEmulator(rest);
      return;
    }
    case 'dev-cluster': {
      const { runDevCluster } = await import('./dev-cluster.ts');
      await runDevCluster(rest);
      return;
    }
    case 'balancer': {
      const { runBalancer } = await import('./balancer-cli.ts');
      await runBalancer(rest);
      return;
    }
    case 'compute-driver': {
      const { runComputeDriver } = await import('./compute-driver/cli.ts');
      await runComputeDriver(rest);
      return;
    }
    default:
      console.error(USAGE);
      process.exit(cmd === undefined || cmd === 'help' || cmd === '--help' ? 0 : 2);
  }
}

main().catch((err: unknown) => {
  console.error('openshell-emulator: fatal:', err);
  process.exit(1);
});
