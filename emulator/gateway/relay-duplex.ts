// Bridges a claimed RelayStream call to a byte Duplex: outbound bytes leave as 16 KiB
// RelayFrame{data} chunks (reference §2.2 step 7), inbound data frames are pushed with backpressure.
import { Duplex } from 'node:stream';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { RelayFrame } from '../proto.ts';

const CHUNK_BYTES = 16 * 1024;

export function relayDuplex(call: ServerDuplexStream<RelayFrame, RelayFrame>): Duplex {
  let ended = false;
  const finishCall = (): void => {
    if (ended) return;
    ended = true;
    try {
      call.end();
    } catch {
      // the call may already be cancelled
    }
  };
  const duplex = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      let offset = 0;
      const writeNext = (): void => {
        while (offset < chunk.length) {
          const part = chunk.subarray(offset, offset + CHUNK_BYTES);
          offset += part.length;
          if (!call.write({ data: part })) {
            call.once('drain', writeNext);
            return;
          }
        }
        cb();
      };
      if (ended || call.cancelled) {
        cb(new Error('relay stream closed'));
        return;
      }
      writeNext();
    },
    final(cb) {
      finishCall();
      cb();
    },
    read() {
      call.resume();
    },
    destroy(err, cb) {
      finishCall();
      cleanup();
      cb(err);
    },
  });
  const onData = (frame: RelayFrame): void => {
    if (frame.data && frame.data.length > 0 && !duplex.push(frame.data)) call.pause();
  };
  const onEnd = (): void => {
    duplex.push(null);
  };
  const onGone = (): void => {
    ended = true;
    duplex.destroy();
  };
  const onError = (): void => onGone();
  const cleanup = (): void => {
    call.off('data', onData);
    call.off('end', onEnd);
    call.off('cancelled', onGone);
    call.off('error', onError);
  };
  call.on('data', onData);
  call.on('end', onEnd);
  call.on('cancelled', onGone);
  call.on('error', onError);
  return duplex;
}
