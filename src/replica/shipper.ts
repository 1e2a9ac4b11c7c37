/**
 * Where the replica volume runs. The replicator applies its stream to a `ReplicaTarget`: the
 * replica volume itself (in this thread: tests, `mem://`) or a `WorkerTarget`, the volume in a
 * worker thread (what `hyper replica serve` uses).
 *
 * Why a worker: applying a 4 KiB write to a volume costs ~25 µs of engine work (index, block
 * copies, compression, checksums) and a 32 MiB segment is laid out in one synchronous step;
 * on the NBD server's thread that work delays every client request behind it. Measured on
 * the 2-core test machine, fio 4k randwrite QD16 on a tmpfs primary: 68k IOPS with nothing
 * shipped, ~12k with the volume in the serving thread.
 *
 * The protocol (shipper-worker.ts answers it): changes go in batches, posted once per turn of
 * the event loop without waiting for an answer; the worker applies them in order and
 * reports the bytes applied, which bounds the bytes in flight (`windowBytes`). A change that
 * fails poisons the worker: every later request fails with the same error, flush included,
 * so a checkpoint reported by flush() holds every change sent before it.
 */
import { Worker } from 'node:worker_threads';
import { HyperError, toHyperError } from '../errors.js';
import type { OpenStoreOptions } from '../format/store/index.js';
import type { CheckpointInfo, Logger } from '../format/volume/types.js';

/** What the replicator needs of the replica volume. `Volume` is one. */
export interface ReplicaTarget {
  readonly info: {
    url: string;
    size: number;
    checkpoint: number;
    checkpointTime: Date;
    /** The lease epoch the replica is written under (fences the replica's manifest). */
    writerEpoch?: number;
  };
  write(offset: number, data: Buffer): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  flush(): Promise<CheckpointInfo>;
  close(): Promise<void>;
  /** write() has copied `data` when it resolves: the caller may reuse the buffer then. */
  readonly copiesData?: boolean;
  /** Bytes of changes sent but not yet applied (they count against the replicator's pool). */
  readonly heldBytes?: number;
  /** Stop at once, as a killed process would (nothing more reaches the store). */
  kill?(): Promise<void>;
}

/** Everything the worker needs to open the replica volume (structured-cloneable). */
export interface WorkerTargetSpec {
  /** URL of the replica volume. */
  url: string;
  storeOptions: OpenStoreOptions;
  holder: string;
  /** Take the lease from a live holder. */
  force: boolean;
  /** Take the lease back if it is this holder's own. */
  reclaim?: boolean;
  flushPipeline?: number;
}

export type SerializedError = ReturnType<HyperError['toJSON']>;

/**
 * A batch of changes, packed so that posting it clones nothing: `ops` holds (kind, offset,
 * length) triples (kind 1 write, 2 zero) and `data` the written bytes one after another; both
 * buffers are transferred.
 */
export interface Batch {
  ops: Float64Array;
  count: number;
  data: Uint8Array;
  bytes: number;
}

export const OP_WRITE = 1;
export const OP_ZERO = 2;

export type ToWorker =
  | { t: 'open'; spec: WorkerTargetSpec }
  | { t: 'batch'; batch: Batch }
  | { t: 'flush'; id: number }
  | { t: 'close'; id: number };

export type FromWorker =
  | { t: 'opened'; info: ReplicaTarget['info'] }
  | {
      t: 'applied';
      bytes: number;
      /** The batch's data buffer, given back for reuse. */ buffer?: ArrayBuffer;
    }
  | { t: 'done'; id: number; info?: CheckpointInfo }
  | { t: 'failed'; id?: number; error: SerializedError }
  | { t: 'log'; level: keyof Logger; msg: string; fields?: Record<string, unknown> };

export function serializeError(e: unknown): SerializedError {
  return toHyperError(e).toJSON();
}

function reviveError(s: SerializedError): HyperError {
  return new HyperError(s.kind, s.code, s.message, {
    ...(s.suggestion === undefined ? {} : { suggestion: s.suggestion }),
    ...(s.key === undefined ? {} : { key: s.key }),
  });
}

/**
 * Start the worker: its module sits next to this one (.js when built). Under tsx (tests run
 * the sources) the worker registers tsx's loader first: module hooks are per thread.
 */
function startWorker(): Worker {
  if (!import.meta.url.endsWith('.ts'))
    return new Worker(new URL('./shipper-worker.js', import.meta.url));
  const url = new URL('./shipper-worker.ts', import.meta.url).href;
  return new Worker(
    `import('tsx/esm/api').then((t) => { t.register(); return import(${JSON.stringify(url)}); })`,
    { eval: true },
  );
}

const DEFAULT_WINDOW = 64 * 1024 * 1024;
/** A batch is posted once it holds this much, or at the end of the turn. */
const BATCH_BYTES = 4 * 1024 * 1024;

/** The replica volume in a worker thread. */
export class WorkerTarget implements ReplicaTarget {
  info: ReplicaTarget['info'];
  /** add() copies every change into the batch before it resolves. */
  readonly copiesData = true;
  private ops = new Float64Array(3 * 1024);
  private count = 0;
  private data: Buffer | undefined;
  private batchBytes = 0;
  private readonly spare: Buffer[] = [];
  private scheduled = false;
  private inFlight = 0;
  private readonly roomWaiters: (() => void)[] = [];
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (i: CheckpointInfo | undefined) => void; reject: (e: HyperError) => void }
  >();
  private error: HyperError | undefined;
  private exited = false;

  private constructor(
    private readonly worker: Worker,
    info: ReplicaTarget['info'],
    private readonly log: Logger,
    private readonly windowBytes: number,
  ) {
    this.info = info;
    worker.on('message', (m: FromWorker) => this.onMessage(m));
    worker.on('error', (e) => this.poison(toHyperError(e)));
    worker.on('exit', () => {
      this.exited = true;
      this.poison(
        new HyperError('internal', 'INTERNAL', 'The replica shipper worker stopped', {
          suggestion: 'The replicator reopens the replica and resyncs what was not committed.',
        }),
      );
    });
  }

  /**
   * Start a worker and open the replica volume in it (taking its lease). When `signal` fires
   * first, the worker is stopped and the open fails with its reason.
   */
  static async open(
    spec: WorkerTargetSpec,
    log: Logger,
    windowBytes = DEFAULT_WINDOW,
    signal?: AbortSignal,
  ): Promise<WorkerTarget> {
    const worker = startWorker();
    const info = await new Promise<ReplicaTarget['info']>((resolve, reject) => {
      const onMessage = (m: FromWorker): void => {
        if (m.t === 'log') forwardLog(log, m);
        else if (m.t === 'opened') done(() => resolve(m.info));
        else if (m.t === 'failed') done(() => reject(reviveError(m.error)));
      };
      const onError = (e: Error): void => done(() => reject(toHyperError(e)));
      const onExit = (): void =>
        done(() =>
          reject(new HyperError('internal', 'INTERNAL', 'The replica shipper worker stopped')),
        );
      const onAbort = (): void => done(() => reject(toHyperError(signal?.reason)));
      const done = (f: () => void): void => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
        signal?.removeEventListener('abort', onAbort);
        f();
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      worker.postMessage({ t: 'open', spec } satisfies ToWorker);
    }).catch(async (e: unknown) => {
      await worker.terminate();
      throw e;
    });
    return new WorkerTarget(worker, info, log, windowBytes);
  }

  get heldBytes(): number {
    return this.inFlight;
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.add(OP_WRITE, offset, data.length, data);
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.add(OP_ZERO, offset, length, undefined);
  }

  async flush(): Promise<CheckpointInfo> {
    const info = await this.request('flush');
    if (info === undefined) throw new HyperError('internal', 'INTERNAL', 'flush: no checkpoint');
    this.info = { ...this.info, checkpoint: info.checkpoint, checkpointTime: info.time };
    return info;
  }

  async close(): Promise<void> {
    try {
      if (!this.exited) await this.request('close');
    } finally {
      await this.worker.terminate();
    }
  }

  async kill(): Promise<void> {
    this.poison(new HyperError('unavailable', 'ABORTED', 'The replica shipper was stopped'));
    await this.worker.terminate();
  }

  private async add(
    kind: number,
    offset: number,
    length: number,
    data: Buffer | undefined,
  ): Promise<void> {
    if (this.error) throw this.error;
    const bytes = data?.length ?? 0;
    // Counted from the moment it is queued, so the window bounds what is held here as well.
    while (this.inFlight > 0 && this.inFlight + bytes > this.windowBytes) {
      await new Promise<void>((r) => this.roomWaiters.push(r));
      if (this.error) throw this.error;
    }
    if (data !== undefined) {
      if (this.data !== undefined && this.batchBytes + bytes > this.data.length) this.post();
      this.data ??=
        bytes <= BATCH_BYTES
          ? (this.spare.pop() ?? Buffer.allocUnsafeSlow(BATCH_BYTES))
          : Buffer.allocUnsafeSlow(bytes);
      data.copy(this.data, this.batchBytes);
      this.batchBytes += bytes;
      this.inFlight += bytes;
    }
    if (3 * (this.count + 1) > this.ops.length) {
      const grown = new Float64Array(this.ops.length * 2);
      grown.set(this.ops);
      this.ops = grown;
    }
    this.ops[3 * this.count] = kind;
    this.ops[3 * this.count + 1] = offset;
    this.ops[3 * this.count + 2] = length;
    this.count++;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.post());
    }
  }

  /** Send what is batched (its buffers are transferred: fresh ones for the next batch). */
  private post(): void {
    this.scheduled = false;
    if (this.count === 0 || this.exited) return;
    const data = this.data ?? Buffer.allocUnsafeSlow(0);
    const batch: Batch = {
      ops: this.ops.subarray(0, 3 * this.count),
      count: this.count,
      data: new Uint8Array(data.buffer, 0, this.batchBytes),
      bytes: this.batchBytes,
    };
    const transfer = [batch.ops.buffer as ArrayBuffer, data.buffer as ArrayBuffer];
    this.ops = new Float64Array(3 * 1024);
    this.count = 0;
    this.data = undefined;
    this.batchBytes = 0;
    this.worker.postMessage({ t: 'batch', batch } satisfies ToWorker, transfer);
  }

  private request(t: 'flush' | 'close'): Promise<CheckpointInfo | undefined> {
    if (this.error) return Promise.reject(this.error);
    this.post();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ t, id } satisfies ToWorker);
    });
  }

  private onMessage(m: FromWorker): void {
    switch (m.t) {
      case 'applied':
        this.inFlight -= m.bytes;
        // Reused: its pages are already mapped (a fresh 4 MiB buffer faults in 1,024 pages).
        if (m.buffer !== undefined && m.buffer.byteLength === BATCH_BYTES && this.spare.length < 8)
          this.spare.push(Buffer.from(m.buffer));
        this.wakeWriters();
        break;
      case 'done': {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        p?.resolve(m.info);
        break;
      }
      case 'failed': {
        const err = reviveError(m.error);
        if (m.id !== undefined) {
          const p = this.pending.get(m.id);
          this.pending.delete(m.id);
          p?.reject(err);
        }
        this.poison(err);
        break;
      }
      case 'log':
        forwardLog(this.log, m);
        break;
      case 'opened':
        break;
    }
  }

  private poison(err: HyperError): void {
    this.error ??= err;
    for (const p of this.pending.values()) p.reject(this.error);
    this.pending.clear();
    this.wakeWriters();
  }

  private wakeWriters(): void {
    for (const w of this.roomWaiters.splice(0)) w();
  }
}

function forwardLog(log: Logger, m: Extract<FromWorker, { t: 'log' }>): void {
  log[m.level](m.msg, m.fields);
}
