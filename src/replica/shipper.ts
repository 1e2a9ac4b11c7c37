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
 * reports the bytes applied, which bounds the bytes in flight (the window: the ring's size). A change that
 * fails poisons the worker: every later request fails with the same error, flush included,
 * so a checkpoint reported by flush() holds every change sent before it.
 *
 * Written bytes travel through a ring the two threads share (a SharedArrayBuffer as large
 * as the window): the sender copies them in, the worker copies them out into the volume, and
 * the space comes back with the worker's report. Nothing is allocated per batch. Posting a
 * fresh (or transferred) buffer per batch did: every ArrayBuffer that arrives in an isolate
 * counts as new external memory there until a full GC, and V8 starts one for every 64 MiB of
 * it. At 4k random writes, batches of a few KiB each took a 4 MiB buffer: both threads ran a
 * full GC several times a second (fio 4k randwrite QD16 on a tmpfs primary, RGW on the
 * same 2 cores: a quarter of all CPU went to marking).
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
  /**
   * write() when it can be done at once (copied, like copiesData's write()): true if it was,
   * false if write() would have to wait or fail, which is then the caller's to call.
   */
  tryWrite?(offset: number, data: Buffer): boolean;
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
 * A batch of changes: `ops` holds (kind, offset, length) triples (kind 1 write, 2 zero); the
 * written bytes follow one another in the ring from `ringAt`, or, for a write too large for
 * the ring, in `data` (transferred). `bytes` is what the batch holds of the window (ring
 * space skipped to keep its bytes in one piece included); the worker reports it back.
 */
export interface Batch {
  ops: number[];
  ringAt: number;
  data?: Uint8Array;
  bytes: number;
}

export const OP_WRITE = 1;
export const OP_ZERO = 2;

export type ToWorker =
  | { t: 'open'; spec: WorkerTargetSpec; ring: SharedArrayBuffer }
  | { t: 'batch'; batch: Batch }
  | { t: 'flush'; id: number }
  | { t: 'close'; id: number };

export type FromWorker =
  | { t: 'opened'; info: ReplicaTarget['info'] }
  | { t: 'applied'; bytes: number }
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
  private ops: number[] = [];
  /** Where the batch being built starts in the ring, and the window bytes it holds. */
  private batchAt = 0;
  private batchBytes = 0;
  /** Where the next written bytes go in the ring. */
  private ringPos = 0;
  private scheduled = false;
  /** Window bytes posted or batched and not yet reported applied. */
  private inFlight = 0;
  private readonly roomWaiters: (() => void)[] = [];
  /** Changes waiting for room (tryWrite() must not overtake them). */
  private waiting = 0;
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (i: CheckpointInfo | undefined) => void; reject: (e: HyperError) => void }
  >();
  private error: HyperError | undefined;
  private exited = false;

  private constructor(
    private readonly worker: Worker,
    private readonly ring: Buffer,
    info: ReplicaTarget['info'],
    private readonly log: Logger,
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
    // As large as the window: whatever the window lets through has room in it.
    const ring = new SharedArrayBuffer(windowBytes);
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
      worker.postMessage({ t: 'open', spec, ring } satisfies ToWorker);
    }).catch(async (e: unknown) => {
      await worker.terminate();
      throw e;
    });
    return new WorkerTarget(worker, Buffer.from(ring), info, log);
  }

  get heldBytes(): number {
    return this.inFlight;
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.add(OP_WRITE, offset, data.length, data);
  }

  /**
   * write() without a promise when the ring has room for `data` now (and no change waits for
   * room: it would overtake that one).
   */
  tryWrite(offset: number, data: Buffer): boolean {
    if (this.error !== undefined || this.waiting > 0) return false;
    if (data.length > this.ring.length / 2 || !this.fits(data.length)) return false;
    this.place(OP_WRITE, offset, data.length, data);
    return true;
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
    const size = this.ring.length;
    // Too large for the ring: a batch of its own, with its own memory (it still counts
    // against the window, which it may exceed alone).
    const own = bytes > size / 2;
    // (Counted in `waiting` up to the same turn as the change is queued: tryWrite() cannot
    // come between.)
    this.waiting++;
    try {
      while (own ? this.inFlight > 0 && this.inFlight + bytes > size : !this.fits(bytes))
        await this.room();
    } finally {
      this.waiting--;
    }
    if (!own) {
      this.place(kind, offset, length, data);
      return;
    }
    this.post();
    const copy = Buffer.allocUnsafeSlow(bytes);
    data!.copy(copy);
    this.inFlight += bytes;
    const batch: Batch = { ops: [kind, offset, length], ringAt: -1, data: copy, bytes };
    this.worker.postMessage({ t: 'batch', batch } satisfies ToWorker, [copy.buffer]);
  }

  /**
   * Whether `bytes` fit in the ring now. The bytes of a batch are in one piece: a write that
   * would wrap starts the ring again, and the space skipped is held until the worker reports
   * this batch. Counted from the moment it is queued, so the window (the ring's size) bounds
   * what is held here as well.
   */
  private fits(bytes: number): boolean {
    const size = this.ring.length;
    const skip = this.ringPos + bytes > size ? size - this.ringPos : 0;
    return this.inFlight === 0 || this.inFlight + skip + bytes <= size;
  }

  /** Add a change to the batch and its bytes to the ring, which fits() said has room. */
  private place(kind: number, offset: number, length: number, data: Buffer | undefined): void {
    const bytes = data?.length ?? 0;
    const size = this.ring.length;
    const wrap = this.ringPos + bytes > size;
    const skip = wrap ? size - this.ringPos : 0;
    if (wrap || this.batchBytes >= BATCH_BYTES) this.post();
    if (wrap) {
      this.ringPos = 0;
      this.batchBytes = skip;
      this.inFlight += skip;
    }
    if (this.ops.length === 0) this.batchAt = this.ringPos;
    if (data !== undefined) {
      data.copy(this.ring, this.ringPos);
      this.ringPos += bytes;
      this.batchBytes += bytes;
      this.inFlight += bytes;
    }
    this.ops.push(kind, offset, length);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.post());
    }
  }

  /** Wait until the worker reports bytes applied (or fails). */
  private async room(): Promise<void> {
    await new Promise<void>((r) => this.roomWaiters.push(r));
    if (this.error) throw this.error;
  }

  /** Send what is batched. */
  private post(): void {
    this.scheduled = false;
    if (this.ops.length === 0 || this.exited) return;
    const batch: Batch = { ops: this.ops, ringAt: this.batchAt, bytes: this.batchBytes };
    this.ops = [];
    this.batchBytes = 0;
    this.worker.postMessage({ t: 'batch', batch } satisfies ToWorker);
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
