/**
 * Online compaction of a served volume: every `everyMs`, compaction runs on the volume the
 * server holds open, beside its clients (CompactOptions.volume), under the retention policy
 * given. No lease changes hands and no client waits: blocks a client changes while a run
 * copies them keep the client's change, and segments the server has not committed yet are
 * never deleted. One run at a time; a run that fails (the store down, the lease lost) is
 * logged, and the next one tries again. `stop()` (before the volume closes) aborts a run in
 * progress, which stops cleanly, and waits for it.
 */
import { isHyperError } from '../errors.js';
import type { Logger } from '../format/volume/types.js';
import type { ObjectStore } from '../format/store/types.js';
import { compactVolume, type CompactResult } from '../format/volume/compact.js';
import type { OpenStoreFn } from '../format/volume/segments.js';
import type { Volume } from '../format/volume/volume.js';
import type { CompactionObserver } from '../metrics/index.js';

export interface CompactionPolicy {
  /** How often a run starts (after the previous one ended). */
  everyMs: number;
  /** CompactOptions.keepLast, keepWithinMs, minLive and graceMs (their defaults otherwise). */
  keepLast?: number;
  keepWithinMs?: number;
  minLive?: number;
  graceMs?: number;
}

export class AutoCompaction {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly abort = new AbortController();
  /** Runs that ended, and of them those that failed. */
  runs = 0;
  failures = 0;
  last: CompactResult | undefined;

  constructor(
    private readonly volume: Volume,
    private readonly store: ObjectStore,
    private readonly policy: CompactionPolicy,
    private readonly o: {
      name: string;
      logger: Logger;
      openStore?: OpenStoreFn;
      observer?: CompactionObserver;
    },
  ) {
    this.schedule();
  }

  private schedule(): void {
    if (this.abort.signal.aborted) return;
    this.timer = setTimeout(() => {
      this.running = this.once().finally(() => {
        this.running = undefined;
        this.schedule();
      });
    }, this.policy.everyMs);
    this.timer.unref();
  }

  private async once(): Promise<void> {
    const p = this.policy;
    const started = Date.now();
    try {
      const r = await compactVolume(this.store, {
        volume: this.volume,
        signal: this.abort.signal,
        logger: this.o.logger,
        ...(p.keepLast === undefined ? {} : { keepLast: p.keepLast }),
        ...(p.keepWithinMs === undefined ? {} : { keepWithinMs: p.keepWithinMs }),
        ...(p.minLive === undefined ? {} : { minLive: p.minLive }),
        ...(p.graceMs === undefined ? {} : { graceMs: p.graceMs }),
        ...(this.o.openStore ? { openStore: this.o.openStore } : {}),
      });
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
    } catch (e) {
      if (this.abort.signal.aborted) return;
      this.runs++;
      this.failures++;
      this.o.observer?.ran({ ok: false, seconds: 0, reclaimedBytes: 0, movedBytes: 0 });
      // Fenced: another writer has the volume now, and this server writes nothing more.
      const fenced = isHyperError(e, 'FENCED');
      if (fenced) this.abort.abort();
      this.o.logger.warn(
        fenced
          ? 'compaction stopped: another writer took the volume over'
          : 'compaction failed; the next run tries again',
        { export: this.o.name, error: e instanceof Error ? e.message : String(e) },
      );
    }
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
      running,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, waitMs);
      }),
    ]);
    clearTimeout(timer);
  }
}
