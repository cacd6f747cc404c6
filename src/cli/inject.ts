// `openshell-ha-sidecar inject`: the Helm post-renderer (Helm 3 executable, Helm 4 plugin command).
// stdout is the manifest and nothing else; every remark goes to stderr (deployment reference §1.4).
import { injectManifests } from '../deploy/inject.ts';
import { INJECT_USAGE, parseInjectArgs } from '../deploy/inject-options.ts';
import { isOhsError } from '../errors.ts';

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function say(line: string): void {
  process.stderr.write(`openshell-ha inject: ${line}\n`);
}

/** Runs the post-renderer; resolves with the exit code (the caller sets it, never process.exit()). */
export async function runInject(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseInjectArgs(argv);
  } catch (err) {
    say(isOhsError(err) ? err.message : String(err));
    return 2;
  }
  if (parsed.help) {
    process.stderr.write(`${INJECT_USAGE}\n`);
    return 0;
  }
  // Read to EOF before writing anything: Helm feeds stdin from a goroutine and closes it at the end.
  const input = await readAll(process.stdin);
  try {
    const result = injectManifests(input, parsed.options);
    for (const note of result.notes) say(note);
    // Helm 4 treats empty output as an error, Helm 3 `--output-dir` sends empty input: echo what came.
    if (result.output !== '') {
      await new Promise<void>((resolve, reject) => process.stdout.write(result.output, (err) => (err ? reject(err) : resolve())));
    }
    return 0;
  } catch (err) {
    say(`error: ${isOhsError(err) ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return 1;
  }
}
