// In-process buses of one gateway replica (reference §2.8): logs pushed to a replica are only
// readable there, and status pushes reach watchers only when this process made the write.
import { EventEmitter } from 'node:events';
import type { SandboxLogLine } from '../proto.ts';

const LOG_BUFFER_LINES = 2000;

export class LogBus {
  private readonly lines = new Map<string, SandboxLogLine[]>();
  private readonly events = new EventEmitter();

  constructor() {
    this.events.setMaxListeners(0);
  }

  publish(line: SandboxLogLine): void {
    let buf = this.lines.get(line.sandbox_id);
    if (!buf) {
      buf = [];
      this.lines.set(line.sandbox_id, buf);
    }
    buf.push(line);
    if (buf.length > LOG_BUFFER_LINES) buf.splice(0, buf.length - LOG_BUFFER_LINES);
    this.events.emit(line.sandbox_id, line);
  }

  tail(sandboxId: string, n: number): { lines: SandboxLogLine[]; total: number } {
    const buf = this.lines.get(sandboxId) ?? [];
    return { lines: n > 0 ? buf.slice(-n) : [...buf], total: buf.length };
  }

  subscribe(sandboxId: string, fn: (line: SandboxLogLine) => void): () => void {
    this.events.on(sandboxId, fn);
    return () => this.events.off(sandboxId, fn);
  }
}

export class WatchBus {
  private readonly events = new EventEmitter();

  constructor() {
    this.events.setMaxListeners(0);
  }

  notify(sandboxId: string): void {
    this.events.emit(sandboxId);
  }

  subscribe(sandboxId: string, fn: () => void): () => void {
    this.events.on(sandboxId, fn);
    return () => this.events.off(sandboxId, fn);
  }
}
