/**
 * Test stores that run out of room: `FillableStore` (in memory) refuses every PUT with
 * NO_SPACE while `full` is set, as a full disk or an exhausted bucket quota does (reads and
 * deletes still work). `recordingLogger` keeps what an engine logs, to assert on.
 */
import { HyperError } from '../../src/errors.js';
import { MemStore } from '../../src/format/store/mem.js';
import type { PutBody, PutOptions } from '../../src/format/store/types.js';
import type { Logger } from '../../src/format/volume/types.js';

export const noSpace = (key: string): HyperError =>
  new HyperError('unavailable', 'NO_SPACE', `test: full (${key})`);

export class FillableStore extends MemStore {
  full = false;
  /** PUTs refused while full. */
  refused = 0;

  override put(key: string, body: PutBody, options: PutOptions = {}): Promise<{ etag: string }> {
    if (this.full) {
      this.refused++;
      // Answered on a later turn, as a store over the network does (a loop of refusals then
      // leaves timers their turn).
      return new Promise((_, reject) => setImmediate(() => reject(noSpace(key))));
    }
    return super.put(key, body, options);
  }
}

/** A logger keeping the messages of info, warn and error lines (debug is dropped). */
export function recordingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const keep = (m: string): void => {
    lines.push(m);
  };
  return { logger: { debug: () => undefined, info: keep, warn: keep, error: keep }, lines };
}
