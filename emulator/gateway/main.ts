// Process entry for one gateway emulator replica (see cli.ts).
import { runGatewayEmulator } from './cli.ts';

await runGatewayEmulator(process.argv.slice(2));
