/**
 * Warnings that recur while a store or disk stays down or full: a timed flush every few
 * seconds, or every write of the disk cache, fails the same way each time. The first goes
 * out at once; later ones at most every `everyMs`, with how many failures there were and for
 * how long; the first success after them (`ok`) says so once (info).
 */
import type { Logger } from './volume/types.js';

export class RecurringWarning {
  private firstMs: number | undefined;
  private failures = 0;
  private lastMs = -Infinity;

  constructor(
    private readonly log: Pick<Logger, 'warn' | 'info'>,
    private readonly everyMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  warn(msg: string, fields: Record<string, unknown>): void {
    const t = this.now();
    this.firstMs ??= t;
    this.failures++;
    if (t - this.lastMs < this.everyMs) return;
    this.lastMs = t;
    this.log.warn(
      msg,
      this.failures === 1
        ? fields
        : { ...fields, failures: this.failures, failingSeconds: (t - this.firstMs) / 1000 },
    );
  }

  /** It worked: say so if it had failed, and start over. */
  ok(msg: string): void {
    if (this.firstMs === undefined) return;
    this.log.info(msg, {
      failures: this.failures,
      failingSeconds: (this.now() - this.firstMs) / 1000,
    });
    this.firstMs = undefined;
    this.failures = 0;
    this.lastMs = -Infinity;
  }
}
