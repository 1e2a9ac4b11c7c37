/**
 * Whether an open export can make what it is written durable now, in words: GET /healthz of
 * `serve` and of the daemon (503 with these lines), and `health` in the daemon's export
 * status (`hyper ls`). Undefined when it can.
 */
import type { EngineStats } from '../format/volume/types.js';

export function exportProblem(s: EngineStats, now = Date.now()): string | undefined {
  if (s.lease?.stopped) return `writes fail: ${s.lease.stopped}`;
  if (s.lease?.lost) return 'lease lost: another writer took the volume over; writes fail';
  const problems: string[] = [];
  if (s.lease?.lapsed)
    problems.push(
      'lease lapsed: the store refuses its renewal; nothing is committed until one gets through',
    );
  const f = s.flushFailing;
  if (f !== undefined) {
    const secs = Math.max(0, Math.round((now - f.sinceMs) / 1000));
    problems.push(
      `flushes failing for ${secs} s (${f.failures} failed; writes are held, not lost): ${f.error}`,
    );
  }
  return problems.length > 0 ? problems.join('; ') : undefined;
}
