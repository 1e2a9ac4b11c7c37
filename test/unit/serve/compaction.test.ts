/**
 * The schedule of online compaction in a server (serve/compaction.ts): runs every period on
 * the open volume and logs what they did; a run fenced by another writer's takeover stops the
 * schedule (no run every period for ever); stop() waits for a run in progress. Runs asked
 * for (runNow, what a daemon does for `hyper compact`) run one at a time.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemStore } from '../../../src/format/store/mem.js';
import { KiB, MiB } from '../../../src/format/volume/types.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { AutoCompaction } from '../../../src/serve/compaction.js';
import { isHyperError } from '../../../src/errors.js';

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

/** A writer on a new volume with four checkpoints, each overwriting the one before. */
async function withHistory(store: MemStore): Promise<Volume> {
  await Volume.create(store, { size: 4 * MiB, segmentSize: 1 * MiB });
  const vol = await Volume.open(store, { flushIntervalMs: 0 });
  for (let round = 0; round < 4; round++) {
    for (let off = 0; off < 2 * MiB; off += 16 * KiB)
      await vol.write(off, Buffer.alloc(4096, round + 1));
    await vol.flush();
  }
  return vol;
}

describe('AutoCompaction', () => {
  it('compacts on schedule, stops once fenced, and stop() ends it', async () => {
    const store = MemStore.isolated('mem://auto-compaction/');
    const vol = await withHistory(store);
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
    // A run asked for now says why it cannot run.
    await assert.rejects(auto.runNow({ keepLast: 1 }), (e) => isHyperError(e, 'FENCED'));
    await auto.stop();
    await vol.close().catch(() => undefined);
    await other.close();
  });

  it('runs when asked: one at a time, a dry run changes nothing, and stop() refuses more', async () => {
    const store = MemStore.isolated('mem://auto-compaction-now/');
    const vol = await withHistory(store);
    const auto = new AutoCompaction(vol, store, undefined, { name: 'v', logger });
    const dry = await auto.runNow({ keepLast: 1, graceMs: 0 }, { dryRun: true });
    assert.equal(dry.dryRun, true);
    assert.ok(dry.checkpointsDropped >= 3, JSON.stringify(dry));
    assert.equal(auto.runs, 0, 'a dry run is no run');
    // Two at once: the second waits for the first (Volume.claimExclusive would refuse it).
    const [a, b] = await Promise.all([
      auto.runNow({ keepLast: 1, graceMs: 0 }),
      auto.runNow({ keepLast: 1, graceMs: 0 }),
    ]);
    assert.ok(a.checkpointsDropped >= 3, JSON.stringify(a));
    assert.equal(b.checkpointsDropped, 0, JSON.stringify(b));
    assert.equal(auto.runs, 2);
    assert.equal(auto.failures, 0);
    // An aborted request stops its run and counts no failure.
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(auto.runNow({}, { signal: ac.signal }));
    assert.equal(auto.failures, 0);
    await auto.stop();
    await assert.rejects(auto.runNow({}), (e) => isHyperError(e, 'ABORTED'));
    for (let off = 0; off < 2 * MiB; off += 16 * KiB)
      assert.ok((await vol.read(off, 4096)).equals(Buffer.alloc(4096, 4)));
    await vol.close();
  });
});
