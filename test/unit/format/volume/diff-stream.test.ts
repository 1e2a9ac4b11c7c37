import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { ObjectStore } from '../../../../src/format/store/types.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import {
  exportDiff,
  importDiff,
  listMarkers,
  markerName,
  type DiffInput,
} from '../../../../src/format/volume/diff-stream.js';
import { readHead } from '../../../../src/format/volume/heads.js';
import {
  createSnapshot,
  listSnapshots,
  restoreVolume,
} from '../../../../src/format/volume/history.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rng } from '../../../helpers/rng.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function contentAt(store: ObjectStore, checkpoint?: number): Promise<Buffer> {
  const v = await Volume.open(store, {
    readOnly: true,
    ...(checkpoint === undefined ? {} : { at: { checkpoint } }),
  });
  try {
    return await v.read(0, v.info.size);
  } finally {
    await v.close();
  }
}

/** The diff stream from `from` (null: a full stream) to `to` (default: the current checkpoint). */
async function diffBytes(store: ObjectStore, from: number | null, to?: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  const r = await exportDiff(
    store,
    {
      ...(from === null ? {} : { from: { checkpoint: from } }),
      ...(to === undefined ? {} : { to: { checkpoint: to } }),
    },
    async (b) => {
      parts.push(Buffer.from(b));
    },
  );
  assert.equal(r.interrupted, false);
  const all = Buffer.concat(parts);
  assert.equal(all.length, r.streamBytes);
  return all;
}

/** A stream input that hands `bytes` over in pieces of odd sizes. */
function streamOf(bytes: Buffer, seed = 1): DiffInput {
  const rand = rng(seed);
  async function* pieces(): AsyncGenerator<Buffer> {
    for (let off = 0; off < bytes.length;) {
      const n = 1 + Math.floor(rand() * 300 * KiB);
      yield bytes.subarray(off, off + n);
      off += n;
    }
  }
  return { stream: pieces(), name: 'test-stream' };
}

/**
 * A source volume whose history has random writes, zeroed and trimmed ranges and resizes
 * (grow and shrink); returns its checkpoints, oldest first.
 */
async function sourceHistory(store: ObjectStore, rounds: number, seed: number): Promise<number[]> {
  await Volume.create(store, { size: 4 * MiB, segmentSize: 1 * MiB });
  const v = await Volume.open(store, { flushIntervalMs: 0 });
  const rand = rng(seed);
  const cps: number[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      const size = v.info.size;
      for (let k = 0; k < 12; k++) {
        const off = Math.floor(rand() * (size - 256 * KiB));
        const len = 1 + Math.floor(rand() * 200 * KiB);
        const pick = rand();
        if (pick < 0.6) {
          const data = Buffer.alloc(len);
          for (let i = 0; i < len; i += 512)
            data.fill(1 + Math.floor(rand() * 250), i, Math.min(i + 512, len));
          await v.write(off, data);
        } else if (pick < 0.8) await v.writeZeroes(off, len);
        else await v.trim(off, len);
      }
      if (r === 1) await v.resize(size + 3 * MiB); // grow
      if (r === 3) await v.resize(size - 2 * MiB - 512, { allowShrink: true }); // shrink, unaligned
      if (r === 4) await v.resize(size + 1 * MiB);
      cps.push((await v.flush()).checkpoint);
    }
  } finally {
    await v.close();
  }
  return cps;
}

/** A new volume holding `content` (a copy made by other means than import-diff). */
async function copyOf(store: ObjectStore, content: Buffer): Promise<void> {
  await Volume.create(store, { size: content.length, dataBlockSize: 16 * KiB });
  const v = await Volume.open(store, { flushIntervalMs: 0 });
  await v.write(0, content);
  await v.close();
}

/** Objects in a store and their bodies' hashes, to show nothing changed. */
async function snapshotOf(store: ObjectStore): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const page of store.list(''))
    for (const o of page.objects) {
      if (o.key === 'lease') continue;
      out.set(o.key, sha((await store.get(o.key)).body));
    }
  return out;
}

describe('export-diff / import-diff (library)', () => {
  it('a chain of diffs reproduces every checkpoint byte for byte', async () => {
    const src = MemStore.isolated('mem://diff-src/');
    const dst = MemStore.isolated('mem://diff-dst/');
    const cps = await sourceHistory(src, 6, 11);
    await copyOf(dst, await contentAt(src, cps[0]));
    for (let i = 0; i + 1 < cps.length; i++) {
      const from = cps[i] as number;
      const to = cps[i + 1] as number;
      const bytes = await diffBytes(src, from, to);
      // Streams in pieces of two sizes (spooled), and every third diff as bytes in memory.
      const input =
        i % 3 === 2
          ? { bytes, name: `diff ${from}..${to}` }
          : i % 2 === 0
            ? streamOf(bytes, i)
            : streamOf(bytes, 100 + i);
      const r = await importDiff(input, dst, { assumeBase: i === 0 });
      assert.equal(r.base.kind, i === 0 ? 'assumed' : 'marker');
      if (i > 0) assert.equal(r.base.marker?.name, markerName(r.header.sourceUuid, from));
      assert.equal(r.snapshot, markerName(r.header.sourceUuid, to));
      assert.equal(r.removedSnapshot, i === 0 ? undefined : markerName(r.header.sourceUuid, from));
      assert.equal(r.spooled, !('bytes' in input));
      const want = await contentAt(src, to);
      const got = await contentAt(dst);
      assert.equal(got.length, want.length, `size after ${from}→${to}`);
      assert.equal(sha(got), sha(want), `content after ${from}→${to}`);
      // Exactly one marker is left, naming the target's current checkpoint.
      const markers = await listMarkers(dst, r.header.sourceUuid);
      assert.deepEqual(
        markers.map((m) => [m.sourceCheckpoint, m.checkpoint]),
        [[to, r.checkpoint]],
      );
    }
    // Skipping a diff is refused: the target holds the last checkpoint, not the first.
    const skip = await diffBytes(src, cps[0] as number, cps[2] as number);
    await assert.rejects(importDiff(streamOf(skip), dst), (e) => {
      assert.ok(isHyperError(e, 'PRECONDITION_FAILED'), String(e));
      assert.match(e.message, new RegExp(`holds checkpoint ${cps.at(-1)} of source volume`));
      return true;
    });
  });

  it('a full stream (no from) starts a chain on an empty volume of any size; a volume with data refuses it', async () => {
    const src = MemStore.isolated('mem://full-src/');
    const cps = await sourceHistory(src, 6, 23);
    const mid = cps[2] as number;
    const full = await diffBytes(src, null, mid);
    // Only mapped blocks travel: no zero records, data no larger than the volume.
    const dst = MemStore.isolated('mem://full-dst/');
    await Volume.create(dst, { size: 1 * MiB, dataBlockSize: 16 * KiB });
    const before = await snapshotOf(dst);
    const dry = await importDiff(streamOf(full, 5), dst, { dryRun: true });
    assert.equal(dry.base.kind, 'empty');
    assert.equal(dry.header.fromCheckpoint, 0);
    assert.equal(dry.header.fromSize, 0);
    assert.equal(dry.zeroRecordCount, 0);
    assert.deepEqual(await snapshotOf(dst), before);
    const r = await importDiff(streamOf(full, 6), dst);
    assert.equal(r.base.kind, 'empty');
    assert.equal(r.snapshot, markerName(r.header.sourceUuid, mid));
    assert.equal(sha(await contentAt(dst)), sha(await contentAt(src, mid)));
    // The chain goes on with ordinary diffs, proved by the marker the full stream left.
    for (let i = 2; i + 1 < cps.length; i++) {
      const next = await importDiff(
        streamOf(await diffBytes(src, cps[i] as number, cps[i + 1])),
        dst,
      );
      assert.equal(next.base.kind, 'marker');
      assert.equal(sha(await contentAt(dst)), sha(await contentAt(src, cps[i + 1])));
    }
    // A volume that holds data (even one block) is not an empty base: nothing is written.
    const busy = MemStore.isolated('mem://full-busy/');
    await Volume.create(busy, { size: 8 * MiB });
    const v = await Volume.open(busy, { flushIntervalMs: 0 });
    await v.write(4096, Buffer.alloc(512, 9));
    await v.close();
    const kept = await snapshotOf(busy);
    await assert.rejects(importDiff(streamOf(full), busy), (e) => {
      assert.ok(isHyperError(e, 'PRECONDITION_FAILED'), String(e));
      assert.match(e.message, /exported without --from/);
      assert.match(e.suggestion ?? '', /new volume/);
      return true;
    });
    assert.deepEqual(await snapshotOf(busy), kept);
    // Applying the full stream again to the copy is refused too (it holds data now).
    await assert.rejects(importDiff(streamOf(full), dst), (e) =>
      isHyperError(e, 'PRECONDITION_FAILED'),
    );
  });

  it('reads a diff file twice without spooling; --dry-run writes nothing', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-diff-test-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const src = MemStore.isolated('mem://diff-src2/');
    const dst = new CountingStore(MemStore.isolated('mem://diff-dst2/'));
    const cps = await sourceHistory(src, 2, 5);
    await copyOf(dst, await contentAt(src, cps[0]));
    const path = join(dir, 'd.diff');
    await writeFile(path, await diffBytes(src, cps[0] as number, cps[1] as number));
    const before = await snapshotOf(dst);
    dst.resetStats();
    const dry = await importDiff({ path }, dst, { assumeBase: true, dryRun: true });
    assert.equal(dry.dryRun, true);
    assert.equal(dry.checkpoint, undefined);
    assert.equal(dst.stats().put + dst.stats().delete, 0);
    assert.deepEqual(await snapshotOf(dst), before);
    const phases = new Set<string>();
    const r = await importDiff({ path }, dst, { assumeBase: true }, (p) => phases.add(p.phase));
    assert.equal(r.spooled, false);
    assert.deepEqual([...phases].sort(), ['apply', 'verify']);
    assert.equal(sha(await contentAt(dst)), sha(await contentAt(src, cps[1])));
  });

  it('refuses a wrong base, a damaged or truncated stream, writing nothing', async () => {
    const src = MemStore.isolated('mem://diff-src3/');
    const dst = new CountingStore(MemStore.isolated('mem://diff-dst3/'));
    const cps = await sourceHistory(src, 3, 7);
    const [c0, c1, c2] = cps as [number, number, number];
    await copyOf(dst, await contentAt(src, c0));
    const d01 = await diffBytes(src, c0, c1);
    const d12 = await diffBytes(src, c1, c2);

    const refused = async (input: DiffInput, code: string, message: RegExp, assumeBase = false) => {
      const before = await snapshotOf(dst);
      dst.resetStats();
      await assert.rejects(importDiff(input, dst, { assumeBase }), (e) => {
        assert.ok(isHyperError(e), String(e));
        assert.equal(e.code, code, e.message);
        assert.match(e.message, message);
        return true;
      });
      assert.equal(dst.stats().put + dst.stats().delete, 0, 'nothing written');
      assert.deepEqual(await snapshotOf(dst), before);
    };

    // No marker and no --assume-base.
    await refused(streamOf(d01), 'PRECONDITION_FAILED', /nothing shows that .* holds checkpoint/);
    // --assume-base with a size that cannot be the from-checkpoint's.
    await refused(streamOf(d12), 'PRECONDITION_FAILED', /cannot be a copy/, true);
    // Damage: a flipped byte in a data record, and a stream cut short.
    const flipped = Buffer.from(d01);
    flipped[200] = (flipped[200] as number) ^ 0x04;
    await refused(
      streamOf(flipped),
      'CHECKSUM_MISMATCH',
      /record at byte 96 .*fails its checksum/,
      true,
    );
    await refused(streamOf(d01.subarray(0, d01.length - 10)), 'CORRUPT_OBJECT', /truncated/, true);
    const v9 = Buffer.from(d01);
    v9.writeUInt16LE(9, 4);
    await refused(streamOf(v9), 'UNSUPPORTED_FORMAT_VERSION', /version 9/, true);
    // The source itself.
    await assert.rejects(importDiff(streamOf(d01), src, { assumeBase: true }), (e) =>
      isHyperError(e, 'INVALID_ARGUMENT'),
    );

    // Apply the first diff, then change the target: the next diff is refused until it is
    // restored to its marker.
    const first = await importDiff(streamOf(d01), dst, { assumeBase: true });
    const v = await Volume.open(dst, { flushIntervalMs: 0 });
    await v.write(0, Buffer.alloc(4096, 0xee));
    await v.close();
    await refused(streamOf(d12), 'PRECONDITION_FAILED', /was changed after it received/);
    // A marker showing another checkpoint beats --assume-base.
    await restoreVolume(dst, { snapshot: first.snapshot as string });
    await refused(streamOf(d01), 'PRECONDITION_FAILED', /already holds checkpoint/, true);
    const r = await importDiff(streamOf(d12), dst);
    assert.equal(r.base.kind, 'marker');
    assert.equal(sha(await contentAt(dst)), sha(await contentAt(src, c2)));
  });

  it('accepts a target whose blocks moved but whose content did not (rewrite, compaction)', async () => {
    const src = MemStore.isolated('mem://diff-src4/');
    const dst = MemStore.isolated('mem://diff-dst4/');
    const cps = await sourceHistory(src, 4, 3);
    await copyOf(dst, await contentAt(src, cps[0]));
    await importDiff(streamOf(await diffBytes(src, cps[0]!, cps[1]!)), dst, { assumeBase: true });
    // The same bytes written again: a new index root, the same content.
    const rootBefore = (await readHead(dst)).head.root;
    const v = await Volume.open(dst, { flushIntervalMs: 0 });
    const data = (await v.extents(0, v.info.size)).find((e) => !e.hole);
    assert.ok(data, 'the target holds data');
    const len = Math.min(data.length, 256 * KiB);
    await v.write(data.offset, await v.read(data.offset, len));
    await v.close();
    assert.equal((await readHead(dst)).head.root.equals(rootBefore), false, 'a new index root');
    const phases = new Set<string>();
    await importDiff(streamOf(await diffBytes(src, cps[1]!, cps[2]!)), dst, {}, (p) =>
      phases.add(p.phase),
    );
    assert.equal(phases.has('compare'), true, 'the content was compared');
    // Compaction keeps the marker's checkpoint and rewrites the current one's blocks.
    await compactVolume(dst, { keepLast: 1, minLive: 1, graceMs: 0 });
    await importDiff(streamOf(await diffBytes(src, cps[2]!, cps[3]!)), dst);
    assert.equal(sha(await contentAt(dst)), sha(await contentAt(src, cps[3])));
  });

  it('an interrupted apply leaves the target at its base, and the import can be run again', async () => {
    const src = MemStore.isolated('mem://diff-src5/');
    const dst = MemStore.isolated('mem://diff-dst5/');
    const cps = await sourceHistory(src, 3, 9);
    await copyOf(dst, await contentAt(src, cps[0]));
    await importDiff(streamOf(await diffBytes(src, cps[0]!, cps[1]!)), dst, { assumeBase: true });
    const base = await contentAt(dst);
    const markers = (await listSnapshots(dst)).map((s) => s.name);
    const d = await diffBytes(src, cps[1]!, cps[2]!);
    const ac = new AbortController();
    await assert.rejects(
      importDiff(streamOf(d), dst, { signal: ac.signal }, (p) => {
        if (p.phase === 'apply') ac.abort();
      }),
      (e) => isHyperError(e, 'ABORTED'),
    );
    assert.equal(sha(await contentAt(dst)), sha(base));
    assert.deepEqual(
      (await listSnapshots(dst)).map((s) => s.name),
      markers,
    );
    await importDiff(streamOf(d), dst);
    assert.equal(sha(await contentAt(dst)), sha(await contentAt(src, cps[2])));
  });

  it('refuses to take a snapshot name it did not make, before writing', async () => {
    const src = MemStore.isolated('mem://diff-src6/');
    const dst = MemStore.isolated('mem://diff-dst6/');
    const cps = await sourceHistory(src, 2, 4);
    await copyOf(dst, await contentAt(src, cps[0]));
    const { head } = await readHead(src);
    await createSnapshot(dst, markerName(head.uuid, cps[1]!));
    const before = (await readHead(dst)).head.checkpoint;
    await assert.rejects(
      importDiff(streamOf(await diffBytes(src, cps[0]!, cps[1]!)), dst, { assumeBase: true }),
      (e) => isHyperError(e, 'SNAPSHOT_EXISTS'),
    );
    assert.equal((await readHead(dst)).head.checkpoint, before);
  });

  it('removes its spool file', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-diff-spool-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const src = MemStore.isolated('mem://diff-src7/');
    const dst = MemStore.isolated('mem://diff-dst7/');
    const cps = await sourceHistory(src, 2, 8);
    await copyOf(dst, await contentAt(src, cps[0]));
    const d = await diffBytes(src, cps[0]!, cps[1]!);
    await assert.rejects(importDiff(streamOf(d.subarray(0, 500)), dst, { spoolDir: dir }));
    await importDiff(streamOf(d), dst, { spoolDir: dir, assumeBase: true });
    assert.deepEqual(await readdir(dir), []);
  });
});
