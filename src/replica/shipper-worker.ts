/**
 * The replica volume's thread (shipper.ts describes the protocol): opens the volume named by
 * the spec, applies batches in order, answers flush and close. After a failure every request
 * fails with that error and nothing more is written.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort, type MessagePort } from 'node:worker_threads';
import { openStore, setDefaultStoreOptions } from '../format/store/index.js';
import type { Logger } from '../format/volume/types.js';
import { Volume } from '../format/volume/volume.js';
import {
  OP_WRITE,
  serializeError,
  type FromWorker,
  type SerializedError,
  type ToWorker,
} from './shipper.js';

const port = ((): MessagePort => {
  if (parentPort === null) throw new Error('shipper-worker.ts runs in a worker thread');
  return parentPort;
})();

const send = (m: FromWorker): void => port.postMessage(m);

/**
 * The shipper yields the CPU to the serving thread: when both want it, client I/O on the
 * primary goes first and the replica lags (the pool, then a region resync, absorbs the
 * difference). Linux lets a thread have its own nice value; elsewhere this does nothing.
 * Measured on 2 busy cores (fio 4k randwrite QD16, RGW on the same machine): ~13k IOPS
 * on the primary at nice 10, ~9–11k at the serving thread's priority.
 */
const SHIPPER_NICE = 10;
try {
  const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
  if (Number.isSafeInteger(tid) && tid > 0) setPriority(tid, SHIPPER_NICE);
} catch {
  // Not Linux, or not allowed: the shipper runs at the process's priority.
}

const logger: Logger = {
  debug: (msg, fields) => send({ t: 'log', level: 'debug', msg, ...(fields ? { fields } : {}) }),
  info: (msg, fields) => send({ t: 'log', level: 'info', msg, ...(fields ? { fields } : {}) }),
  warn: (msg, fields) => send({ t: 'log', level: 'warn', msg, ...(fields ? { fields } : {}) }),
  error: (msg, fields) => send({ t: 'log', level: 'error', msg, ...(fields ? { fields } : {}) }),
};

let volume: Volume | undefined;
/** The ring the written bytes come in (shipper.ts). */
let ring: Buffer = Buffer.alloc(0);
let failure: SerializedError | undefined;
/** Messages are handled one at a time, in arrival order. */
let chain: Promise<void> = Promise.resolve();

function fail(e: unknown, id?: number): void {
  failure ??= serializeError(e);
  send({ t: 'failed', ...(id === undefined ? {} : { id }), error: failure });
}

async function handle(m: ToWorker): Promise<void> {
  switch (m.t) {
    case 'open': {
      ring = Buffer.from(m.ring);
      try {
        // (Stores the replica volume names, like a WAL, open with the same options.)
        setDefaultStoreOptions(m.spec.storeOptions);
        const store = await openStore(m.spec.url, m.spec.storeOptions);
        volume = await Volume.open(store, {
          holder: m.spec.holder,
          force: m.spec.force,
          reclaim: m.spec.reclaim === true,
          flushIntervalMs: 0,
          logger,
          ...(m.spec.flushPipeline === undefined ? {} : { flushPipeline: m.spec.flushPipeline }),
        });
        const i = volume.info;
        send({
          t: 'opened',
          info: {
            url: i.url,
            size: i.size,
            checkpoint: i.checkpoint,
            checkpointTime: i.checkpointTime,
            ...(i.writerEpoch === undefined ? {} : { writerEpoch: i.writerEpoch }),
          },
        });
      } catch (e) {
        fail(e);
      }
      return;
    }
    case 'batch': {
      if (failure === undefined && volume !== undefined) {
        try {
          const { ops, data } = m.batch;
          const bytes =
            data === undefined ? ring : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
          let at = data === undefined ? m.batch.ringAt : 0;
          for (let i = 0; 3 * i < ops.length; i++) {
            const kind = ops[3 * i]!;
            const offset = ops[3 * i + 1]!;
            const length = ops[3 * i + 2]!;
            if (kind === OP_WRITE) {
              await volume.write(offset, bytes.subarray(at, at + length));
              at += length;
            } else {
              await volume.writeZeroes(offset, length);
            }
          }
        } catch (e) {
          fail(e);
        }
      }
      // Applied or not, the bytes are no longer in flight (a failure poisons the sender).
      send({ t: 'applied', bytes: m.batch.bytes });
      return;
    }
    case 'flush': {
      if (failure !== undefined || volume === undefined) {
        send({ t: 'failed', id: m.id, error: failure ?? serializeError(new Error('not open')) });
        return;
      }
      try {
        const info = await volume.flush();
        send({ t: 'done', id: m.id, info });
      } catch (e) {
        fail(e, m.id);
      }
      return;
    }
    case 'close': {
      const v = volume;
      volume = undefined;
      try {
        await v?.close();
        send({ t: 'done', id: m.id });
      } catch (e) {
        fail(e, m.id);
      }
      return;
    }
  }
}

port.on('message', (m: ToWorker) => {
  chain = chain.then(() => handle(m));
});
