/**
 * The schedule of online compaction in a server (serve/compaction.ts): runs every period on
 * the open volume and logs what they did; a run fenced by another writer's takeover stops the
 * schedule (no run every period for ever); stop() waits for a run in progress.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemStore } from '../../../src/format/store/mem.js';
import { KiB, MiB } from '../../../src/format/volume/types.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { AutoCompaction } from '../../../src/serve/compaction.js';

const lines: string[] = [];
const logger = {
  debug: (m: string) => void lines.push(`debug ${m}`),
  info: (m: string, f?: Record<string, unknown>) =>
    void lines.push(`info ${m} ${JSON.stringify(f)}`),
  warn: (m: string) => void lines.push(`warn ${m}`),
  error: (m: string) => void lines.push(`error ${m}`),
};
const until = async (cond: () => boolean, what: string): Promise<void> => {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
};

describe('AutoCompaction', () => {
  it('compacts on schedule, stops once fenced, and stop() ends it', async () => {
    const store = MemStore.isolated('mem://auto-compaction/');
    await Volume.create(store, { size: 4 * MiB, segmentSize: 1 * MiB });
    const vol = await Volume.open(store, { flushIntervalMs: 0 });
    for (let round = 0; round < 4; round++) {
      for (let off = 0; off < 2 * MiB; off += 16 * KiB)
        await vol.write(off, Buffer.alloc(4096, round + 1));
      await vol.flush();
    }
    const auto = new AutoCompaction(
      vol,
      store,
      { everyMs: 20, keepLast: 1, graceMs: 0 },
      { name: 'v', logger },
    );
    await until(() => auto.runs >= 2, 'no runs');
    assert.ok(
      lines.some((l) => /^info compacted .*"checkpointsDropped":[1-9]/.test(l)),
      lines.join('\n'),
    );
    assert.equal(auto.failures, 0, lines.join('\n'));
    // Another writer takes the volume over: the next run is fenced, and the last.
    const other = await Volume.open(store, { force: true, flushIntervalMs: 0 });
    await until(() => auto.failures === 1, 'the fenced run was not reported');
    assert.ok(lines.includes('warn compaction stopped: another writer took the volume over'));
    const runs = auto.runs;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(auto.runs, runs, 'runs went on after the fence');
    await auto.stop();
    await vol.close().catch(() => undefined);
    await other.close();
  });
});
