// The sandbox's "shell": a handful of built-in commands, enough to prove that bytes travel both ways
// through a relay. No real shell and no child processes, so tests behave the same on every machine.

/** Where a command writes and reads. `write` resolves once the peer can take more (backpressure). */
export interface CommandIo {
  write(chunk: string | Buffer): Promise<void>;
  writeErr(text: string): void;
  /** Runs `onChunk` for each stdin chunk; resolves at stdin EOF. Null when there is no stdin (REPL). */
  readStdin: ((onChunk: (chunk: Buffer) => Promise<void>) => Promise<void>) | null;
  /** Aborted when the channel closes under the command. */
  signal: AbortSignal;
}

export interface CommandResult {
  code: number;
  /** True for `exit`: the REPL ends. */
  exit: boolean;
}

/** Splits a command line into words; single and double quotes group, backslash escapes outside single quotes. */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < line.length; i++) {
    const ch = line.charAt(i);
    if (quote) {
      if (ch === quote) quote = null;
      else if (ch === '\\' && quote === '"' && i + 1 < line.length) word += line.charAt(++i);
      else word += ch;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      inWord = true;
    } else if (ch === '\\' && i + 1 < line.length) {
      word += line.charAt(++i);
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
    } else {
      word += ch;
      inWord = true;
    }
  }
  if (inWord) words.push(word);
  return words;
}

const YES_CHUNK = Buffer.alloc(64 * 1024, 'y');

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    timer.unref();
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Runs one command line. `lastCode` is what a bare `exit` returns.
 * Built-ins: echo, cat, head -n <lines>, sandbox-id, pwd, printenv <name>, exit [n], sleep <secs>, yes-bytes <n>;
 * leading `cd <dir> &&` and `NAME=value` words set the working directory and environment.
 */
export async function runCommand(
  line: string,
  ctx: { sandboxId: string; lastCode: number },
  io: CommandIo,
): Promise<CommandResult> {
  let words = splitWords(line);
  // The 2026-08 gateway builds `cd <dir> && K=V … cmd args` (reference §8 "Exec"): honour that much.
  let cwd = '/sandbox';
  while (words[0] === 'cd' && words[2] === '&&' && words[1] !== undefined) {
    cwd = words[1];
    words = words.slice(3);
  }
  const env: Record<string, string> = {};
  for (let m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(words[0] ?? ''); m; m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(words[0] ?? '')) {
    env[m[1] as string] = m[2] as string;
    words = words.slice(1);
  }
  const [cmd, ...args] = words;
  const done = (code: number): CommandResult => ({ code, exit: false });
  switch (cmd) {
    case undefined:
      return done(ctx.lastCode);
    case 'echo':
      await io.write(`${args.join(' ')}\n`);
      return done(0);
    case 'sandbox-id':
      await io.write(`${ctx.sandboxId}\n`);
      return done(0);
    case 'pwd':
      await io.write(`${cwd}\n`);
      return done(0);
    case 'printenv': {
      const v = args[0] === undefined ? undefined : env[args[0]];
      if (v === undefined) return done(1);
      await io.write(`${v}\n`);
      return done(0);
    }
    case 'cat':
      if (io.readStdin) await io.readStdin((chunk) => io.write(chunk));
      return done(0);
    case 'head': {
      // `head -n N`: the first N lines of stdin, then exit without waiting for EOF (what an
      // interactive exec needs, whose client cannot send EOF without closing the channel).
      const n = args[0] === '-n' ? Number(args[1]) : 10;
      if (!Number.isSafeInteger(n) || n < 0) {
        io.writeErr(`head: invalid number of lines: '${args[1] ?? ''}'\n`);
        return done(1);
      }
      if (!io.readStdin || n === 0) return done(0);
      let left = n;
      const reading = new AbortController();
      await Promise.race([
        io.readStdin(async (chunk) => {
          if (left === 0) return;
          let end = 0;
          while (left > 0 && end < chunk.length) {
            const nl = chunk.indexOf(0x0a, end);
            if (nl < 0) {
              end = chunk.length;
              break;
            }
            end = nl + 1;
            left--;
          }
          await io.write(chunk.subarray(0, end));
          if (left === 0) reading.abort();
        }),
        new Promise<void>((resolve) => reading.signal.addEventListener('abort', () => resolve(), { once: true })),
      ]);
      return done(0);
    }
    case 'exit': {
      if (args[0] === undefined) return { code: ctx.lastCode, exit: true };
      const n = Number(args[0]);
      if (!Number.isInteger(n)) {
        io.writeErr(`exit: ${args[0]}: numeric argument required\n`);
        return { code: 2, exit: true };
      }
      return { code: n & 0xff, exit: true };
    }
    case 'sleep': {
      const secs = Number(args[0]);
      if (args[0] === undefined || !Number.isFinite(secs) || secs < 0) {
        io.writeErr(`sleep: invalid time interval '${args[0] ?? ''}'\n`);
        return done(1);
      }
      await sleep(secs * 1000, io.signal);
      return done(0);
    }
    case 'yes-bytes': {
      const total = Number(args[0]);
      if (args[0] === undefined || !Number.isSafeInteger(total) || total < 0) {
        io.writeErr(`yes-bytes: invalid byte count '${args[0] ?? ''}'\n`);
        return done(1);
      }
      let left = total;
      while (left > 0 && !io.signal.aborted) {
        const n = Math.min(left, YES_CHUNK.length);
        await io.write(n === YES_CHUNK.length ? YES_CHUNK : YES_CHUNK.subarray(0, n));
        left -= n;
      }
      return done(0);
    }
    default:
      io.writeErr(`${cmd}: command not found\n`);
      return done(127);
  }
}
