/**
 * zstd on the calling thread, for the chaos harness's virtual runs: @mongodb-js/zstd only
 * answers on the thread pool, in real time, and a result that comes back at a real moment
 * would make a run depend on timing instead of its seed. Here the caller blocks
 * (Atomics.wait) while a worker thread runs the library's own call, so the bytes are exactly
 * those the engine would get, and nothing else runs meanwhile.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/** Largest input or output (blocks are a few KiB; segments never go through a codec whole). */
const MAX_BYTES = 4 * 1024 * 1024;

const IDLE = 0;
const ASKED = 1;
const DONE = 2;
const FAILED = 3;

const WORKER = `
const { workerData } = require('node:worker_threads');
const { createRequire } = require('node:module');
const zstd = createRequire(workerData.from)('@mongodb-js/zstd');
const ctrl = new Int32Array(workerData.ctrl);
const data = new Uint8Array(workerData.data);
(async () => {
  for (;;) {
    Atomics.wait(ctrl, 0, ${IDLE});
    if (Atomics.load(ctrl, 0) !== ${ASKED}) continue;
    const input = Buffer.from(data.subarray(0, ctrl[1]));
    try {
      const out = ctrl[2] === 1 ? await zstd.compress(input, ctrl[3]) : await zstd.decompress(input);
      if (out.length > data.length) throw new Error('zstd result of ' + out.length + ' bytes is too large');
      data.set(out, 0);
      ctrl[1] = out.length;
      Atomics.store(ctrl, 0, ${DONE});
    } catch (e) {
      const msg = Buffer.from(String(e && e.message ? e.message : e));
      data.set(msg.subarray(0, 4096), 0);
      ctrl[1] = Math.min(msg.length, 4096);
      Atomics.store(ctrl, 0, ${FAILED});
    }
    Atomics.notify(ctrl, 0);
  }
})();
`;

export class SyncZstd {
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(16));
  private readonly data = new Uint8Array(new SharedArrayBuffer(MAX_BYTES));
  private readonly worker: Worker;

  constructor() {
    const from = createRequire(import.meta.url).resolve('@mongodb-js/zstd');
    this.worker = new Worker(WORKER, {
      eval: true,
      workerData: { from, ctrl: this.ctrl.buffer, data: this.data.buffer },
    });
    // Never keeps the process alive.
    this.worker.unref();
  }

  compress(input: Buffer, level = 3): Buffer {
    return this.call(1, input, level);
  }

  decompress(input: Buffer): Buffer {
    return this.call(2, input, 0);
  }

  private call(op: number, input: Buffer, level: number): Buffer {
    if (input.length > MAX_BYTES)
      throw new Error(`zstd input of ${input.length} bytes is too large`);
    const c = this.ctrl;
    this.data.set(input, 0);
    c[1] = input.length;
    c[2] = op;
    c[3] = level;
    Atomics.store(c, 0, ASKED);
    Atomics.notify(c, 0);
    // (performance.now: a virtual run replaces Date.now with a clock that stands still here.)
    const deadline = performance.now() + 60_000;
    while (Atomics.load(c, 0) === ASKED) {
      if (Atomics.wait(c, 0, ASKED, 1000) === 'timed-out' && performance.now() > deadline)
        throw new Error('zstd worker did not answer in 60 s');
    }
    const state = Atomics.load(c, 0);
    const out = Buffer.from(this.data.subarray(0, c[1]));
    Atomics.store(c, 0, IDLE);
    if (state !== DONE) throw new Error(out.toString('utf8'));
    return out;
  }
}
