/**
 * Online compaction of a served volume: compaction runs on the volume the server holds open,
 * beside its clients (CompactOptions.volume), under a retention policy. No lease changes
 * hands and no client waits: blocks a client changes while a run copies them keep the
 * client's change, and segments the server has not committed yet are never deleted.
 *
 * Runs come from a schedule (`everyMs`: serve and daemon --compact-every) and on demand
 * (`runNow`: `hyper compact` of a volume a daemon serves, through its control socket). One
 * run at a time: one asked for while another runs waits for it. A scheduled run that fails
 * (the store down, the lease lost) is logged, and the next one tries again; a fenced one
 * stops the schedule. `stop()` (before the volume closes) aborts a run in progress, which
 * stops cleanly, and waits for it.
 */
import { HyperError, isHyperError } from '../errors.js';
import type { Logger } from '../format/volume/types.js';
import type { ObjectStore } from '../format/store/types.js';
import { compactVolume, type CompactResult } from '../format/volume/compact.js';
import type { OpenStoreFn } from '../format/volume/segments.js';
import type { Volume } from '../format/volume/volume.js';
import type { CompactionObserver } from '../metrics/index.js';

/** CompactOptions.keepLast, keepWithinMs, minLive and graceMs (their defaults otherwise). */
export interface RetentionPolicy {
  keepLast?: number;
  keepWithinMs?: number;
  minLive?: number;
  graceMs?: number;
}

/** The retention fields of `p` (a CompactionPolicy carries its schedule too). */
function retentionOf(p: RetentionPolicy): RetentionPolicy {
  const { keepLast, keepWithinMs, minLive, graceMs } = p;
  return {
    ...(keepLast === undefined ? {} : { keepLast }),
    ...(keepWithinMs === undefined ? {} : { keepWithinMs }),
    ...(minLive === undefined ? {} : { minLive }),
    ...(graceMs === undefined ? {} : { graceMs }),
  };
}

export interface CompactionPolicy extends RetentionPolicy {
  /** How often a run starts (after the previous one ended). */
  everyMs: number;
}

export class AutoCompaction {
  private timer: NodeJS.Timeout | undefined;
  /** The run in progress (scheduled or asked for), settled when it ends either way. */
  private running: Promise<unknown> | undefined;
  private readonly abort = new AbortController();
  /** Why runs stopped before stop() was called: another writer fenced this one. */
  private fenced: unknown;
  /** Runs that ended, and of them those that failed. */
  runs = 0;
  failures = 0;
  last: CompactResult | undefined;

  constructor(
    private readonly volume: Volume,
    private readonly store: ObjectStore,
    /** The schedule and its policy; undefined: runs only when asked (runNow). */
    private readonly policy: CompactionPolicy | undefined,
    private readonly o: {
      name: string;
      logger: Logger;
      openStore?: OpenStoreFn;
      observer?: CompactionObserver;
      /** Checkpoints of this volume the server's read-only exports serve (kept). */
      keeps?: () => Iterable<number>;
    },
  ) {
    this.schedule();
  }

  private schedule(): void {
    const p = this.policy;
    if (p === undefined || this.abort.signal.aborted) return;
    this.timer = setTimeout(() => {
      void this.exclusive(() => this.scheduled(p)).finally(() => this.schedule());
    }, p.everyMs);
    this.timer.unref();
  }

  /** Run `f` once no other run is in progress (one run at a time). */
  private async exclusive<T>(f: () => Promise<T>): Promise<T> {
    while (this.running !== undefined) await this.running.catch(() => undefined);
    const run = f();
    this.running = run;
    try {
      return await run;
    } finally {
      if (this.running === run) this.running = undefined;
    }
  }

  /** One run with `policy`: its result, or its failure (counted, observed, thrown). */
  private async run(
    policy: RetentionPolicy,
    signal: AbortSignal,
    dryRun = false,
  ): Promise<CompactResult> {
    const started = Date.now();
    try {
      const r = await compactVolume(this.store, {
        volume: this.volume,
        signal,
        logger: this.o.logger,
        dryRun,
        ...retentionOf(policy),
        ...(this.o.openStore ? { openStore: this.o.openStore } : {}),
        ...(this.o.keeps ? { keepCheckpoints: this.o.keeps } : {}),
      });
      if (dryRun) return r;
      this.runs++;
      this.last = r;
      this.o.observer?.ran({
        ok: true,
        seconds: (Date.now() - started) / 1000,
        reclaimedBytes: r.bytesReclaimed,
        movedBytes: r.bytesRewritten,
      });
      const did = r.checkpointsDropped + r.segmentsDeleted + r.segmentsRewritten > 0;
      this.o.logger[did ? 'info' : 'debug']('compacted', {
        export: this.o.name,
        checkpoint: r.checkpoint,
        checkpointsDropped: r.checkpointsDropped,
        segmentsDeleted: r.segmentsDeleted,
        segmentsDeferred: r.segmentsDeferred,
        reclaimedBytes: r.bytesReclaimed,
        rewrittenBytes: r.bytesRewritten,
        storedBytes: r.storedBytesAfter,
        seconds: (Date.now() - started) / 1000,
      });
      return r;
    } catch (e) {
      // A refusal (an unfinished flatten) is no failed run.
      if (!signal.aborted && !dryRun && !isHyperError(e, 'INVALID_ARGUMENT')) {
        this.runs++;
        this.failures++;
        this.o.observer?.ran({ ok: false, seconds: 0, reclaimedBytes: 0, movedBytes: 0 });
      }
      throw e;
    }
  }

  private async scheduled(policy: CompactionPolicy): Promise<void> {
    try {
      await this.run(policy, this.abort.signal);
    } catch (e) {
      if (this.abort.signal.aborted) return;
      // Fenced: another writer has the volume now, and this server writes nothing more.
      const fenced = isHyperError(e, 'FENCED');
      if (fenced) {
        this.fenced = e;
        this.abort.abort();
      }
      this.o.logger.warn(
        fenced
          ? 'compaction stopped: another writer took the volume over'
          : 'compaction failed; the next run tries again',
        { export: this.o.name, error: e instanceof Error ? e.message : String(e) },
      );
    }
  }

  /**
   * One run now, with its own policy (none: only what no checkpoint reaches goes), after the
   * run in progress if there is one; `signal` aborts it (it stops cleanly), and so does
   * stop(). A dry run reports what a run would do and changes nothing.
   */
  async runNow(
    policy: RetentionPolicy,
    options: { signal?: AbortSignal; dryRun?: boolean } = {},
  ): Promise<CompactResult> {
    const signal =
      options.signal === undefined
        ? this.abort.signal
        : AbortSignal.any([this.abort.signal, options.signal]);
    // Fenced (another writer took the volume over): that says why; else the server stops.
    const stopped = (): unknown =>
      this.fenced ??
      new HyperError('unavailable', 'ABORTED', `The server of ${this.o.name} is stopping`, {
        suggestion: 'Run the compaction again once the volume is served again, or while it is not.',
      });
    if (this.abort.signal.aborted) throw stopped();
    return this.exclusive(async () => {
      signal.throwIfAborted();
      if (this.abort.signal.aborted) throw stopped();
      this.o.logger.info('compacting on request', {
        export: this.o.name,
        ...(options.dryRun ? { dryRun: true } : {}),
      });
      return this.run(policy, signal, options.dryRun === true);
    });
  }

  /**
   * No more runs; the one in progress stops (cleanly) and is waited for, up to `waitMs`: one
   * waiting for room in a write buffer that a failing store keeps full ends when the volume
   * closes under it (it then fails, and is not reported).
   */
  async stop(waitMs = 10_000): Promise<void> {
    this.abort.abort();
    if (this.timer) clearTimeout(this.timer);
    const running = this.running;
    if (!running) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      running.catch(() => undefined),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, waitMs);
      }),
    ]);
    clearTimeout(timer);
  }
}
