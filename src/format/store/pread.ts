/**
 * Positional reads of local files (file:// segments, the disk cache, a replica's primary),
 * done in the event loop while the page cache serves them and on libuv's thread pool
 * otherwise.
 *
 * Handing a 4 KiB read to the thread pool and back costs the serving thread far more than the
 * read: on 2 busy cores, fio 4k randread QD16 of a file:// volume on tmpfs ran at ~21k IOPS
 * through the pool and ~30k with the pread in the loop (the wake-up of a pool thread is the
 * cost, not the copy). But a read that misses the page cache waits for the device, and in
 * the loop it would stall every other request meanwhile. So small reads go in the loop, each
 * timed; when too many in a window were slow (the file is on a device, not in memory), reads
 * go to the pool for a while and then the loop is tried again.
 */
import { read as fsRead, readSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

/** Reads up to this size may run in the loop (a larger copy is worth another core). */
export const LOOP_READ_MAX = 64 * 1024;
/**
 * Reads in the loop within one turn of the event loop before the next ones wait a turn. A
 * flush loading hundreds of index nodes at once held the loop in one long run of
 * microtasks: `serve` of a 1 TiB volume under random writes peaked 20–70 MiB higher (the
 * garbage collector's tasks wait for the loop too); with this bound, 10–30 MiB.
 */
export const LOOP_STREAK = 4;

export interface PreadTuning {
  /** A read in the loop slower than this (ms) counts as a page-cache miss. */
  slowMs: number;
  /** Reads per window, and how many slow ones in a window send reads to the pool. */
  window: number;
  slowLimit: number;
  /** How long reads stay on the pool before the loop is tried again (ms). */
  backoffMs: number;
  /** Clock in ms (tests). */
  now: () => number;
}

const DEFAULTS: PreadTuning = {
  // A page-cache hit of 4 KiB takes under 10 µs (99% of them on 2 busy cores; 0.2% took over
  // 40 µs, preempted); a device read takes 50 µs (NVMe) or more. Slow reads must be a quarter
  // of a window, so that a burst of preemption does not send the reads to the pool.
  slowMs: 0.05,
  window: 64,
  slowLimit: 16,
  backoffMs: 2000,
  now: () => performance.now(),
};

/** Counters of one reader (for tests and diagnostics). */
export interface PreadCounters {
  loop: number;
  pool: number;
  /** Times the reads were sent to the pool after a slow window. */
  backoffs: number;
}

/** The read policy of one set of files (one store, one cache, one primary). */
export class Preader {
  readonly counters: PreadCounters = { loop: 0, pool: 0, backoffs: 0 };
  private readonly t: PreadTuning;
  private inWindow = 0;
  private slowInWindow = 0;
  /** Until when (clock ms) reads go to the pool; 0 while they go in the loop. */
  private poolUntil = 0;
  /** Reads done in the loop since the event loop last turned (see LOOP_STREAK). */
  private streak = 0;
  private readonly endStreak = (): void => {
    this.streak = 0;
  };

  constructor(tuning: Partial<PreadTuning> = {}) {
    this.t = { ...DEFAULTS, ...tuning };
  }

  /** Whether a read of `length` bytes runs in the loop now. */
  private inLoop(length: number): boolean {
    if (length > LOOP_READ_MAX) return false;
    if (this.poolUntil === 0) return true;
    if (this.t.now() < this.poolUntil) return false;
    this.poolUntil = 0;
    return true;
  }

  /** pread(2) of `length` bytes at `position` into `buf` at `at`: bytes read. */
  read(fd: number, buf: Buffer, at: number, length: number, position: number): Promise<number> {
    if (this.inLoop(length)) {
      const t0 = this.t.now();
      let n: number;
      try {
        n = readSync(fd, buf, at, length, position);
      } catch (e) {
        return Promise.reject(e as Error);
      }
      this.counters.loop++;
      this.note(this.t.now() - t0 > this.t.slowMs);
      if (this.streak++ === 0) setImmediate(this.endStreak);
      if (this.streak > LOOP_STREAK) return new Promise((resolve) => setImmediate(resolve, n));
      return Promise.resolve(n);
    }
    this.counters.pool++;
    return new Promise<number>((resolve, reject) =>
      fsRead(fd, buf, at, length, position, (e, n) => (e ? reject(e) : resolve(n))),
    );
  }

  private note(slow: boolean): void {
    if (slow) this.slowInWindow++;
    if (this.slowInWindow >= this.t.slowLimit) {
      this.poolUntil = this.t.now() + this.t.backoffMs;
      this.counters.backoffs++;
    } else if (++this.inWindow < this.t.window) return;
    this.inWindow = 0;
    this.slowInWindow = 0;
  }
}
