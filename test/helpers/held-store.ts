/**
 * A counting store whose PUTs wait while held: `hold(match)` holds the PUTs of keys `match`
 * accepts (all by default) until `release()`, and `held()` resolves once one waits. For tests
 * that keep a segment or a WAL record in flight at a chosen moment.
 */
import { CountingStore } from '../../src/format/store/counting.js';
import type { PutBody, PutOptions } from '../../src/format/store/types.js';

export class HeldStore extends CountingStore {
  private gate: Promise<void> | undefined;
  private match: (key: string) => boolean = () => true;
  private open: (() => void) | undefined;
  private blocked = 0;
  private waiting: (() => void) | undefined;

  hold(match: (key: string) => boolean = () => true): void {
    this.match = match;
    this.gate = new Promise((r) => (this.open = r));
  }

  release(): void {
    this.gate = undefined;
    this.open?.();
  }

  held(): Promise<void> {
    if (this.blocked > 0) return Promise.resolve();
    return new Promise((r) => (this.waiting = r));
  }

  override async put(key: string, body: PutBody, o?: PutOptions): Promise<{ etag: string }> {
    const gate = this.gate;
    if (gate && this.match(key)) {
      this.blocked++;
      this.waiting?.();
      await gate;
      this.blocked--;
    }
    return super.put(key, body, o);
  }
}
