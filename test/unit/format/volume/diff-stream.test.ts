import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { ObjectStore, PutBody, PutOptions } from '../../../../src/format/store/types.js';
import { SEGMENT_PREFIX, SNAPSHOT_PREFIX } from '../../../../src/format/keys.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import {
  exportDiff,
  importDiff,
  listMarkers,
  markerName,
  readDiff,
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
async function sourceHistory(
  store: ObjectStore,
  rounds: number,
  seed: number,
  writesPerRound = 12,
): Promise<number[]> {
  await Volume.create(store, { size: 4 * MiB, segmentSize: 1 * MiB });
  const v = await Volume.open(store, { flushIntervalMs: 0 });
  const rand = rng(seed);
  const cps: number[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      const size = v.info.size;
      for (let k = 0; k < writesPerRound; k++) {
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

/** The 4 KiB blocks of a volume of `size` bytes that no record of diff `d` writes. */
async function untouchedBlocks(d: Buffer, size: number): Promise<number[]> {
  const touched = new Set<number>();
  async function* whole(): AsyncGenerator<Buffer> {
    yield d;
  }
  for await (const ev of readDiff(whole(), 'diff')) {
    const span =
      ev.kind === 'data'
        ? { offset: ev.offset, length: ev.data.length }
        : ev.kind === 'zero'
          ? ev
          : undefined;
    if (!span) continue;
    for (let b = Math.floor(span.offset / 4096); b * 4096 < span.offset + span.length; b++)
      touched.add(b);
  }
  const out: number[] = [];
  for (let b = 0; b < size / 4096; b++) if (!touched.has(b)) out.push(b * 4096);
  return out;
}

/**
 * A view of a store that stops answering when it is asked to write an object under `prefix`
 * after `n` such objects were written: what a process killed half way through an import
 * leaves (what it wrote, nothing after; not even the rollback's restore gets through).
 */
class DyingStore {
  dead = false;
  private left = Infinity;
  private prefix = '';
  readonly store: ObjectStore;

  constructor(inner: ObjectStore) {
    const check = (): void => {
      if (this.dead) throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'the process died');
    };
    this.store = new Proxy(inner, {
      get: (target, prop, receiver) => {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof v !== 'function') return v;
        const f = v as (...a: unknown[]) => unknown;
        if (prop === 'put')
          return (key: string, body: PutBody, options?: PutOptions) => {
            if (key.startsWith(this.prefix) && this.left-- <= 0) this.dead = true;
            check();
            return target.put(key, body, options);
          };
        if (prop === 'sub' || prop === 'close') return f.bind(target);
        return (...args: unknown[]) => {
          check();
          return f.apply(target, args);
        };
      },
    });
  }

  /** Die when asked to write an object under `prefix` after `n` more such writes. */
  dieAfter(n: number, prefix: string): void {
    this.left = n;
    this.prefix = prefix;
  }

  revive(): void {
    this.dead = false;
    this.left = Infinity;
  }
}

const uuidOf = async (store: ObjectStore): Promise<string> => (await readHead(store)).head.uuid;

/**
 * `target` made a copy of checkpoint `cps[0]` of `src` with segments of 1 MiB (an import then
 * writes several, each continuing the volume's chain), brought to `cps[upTo]` by diffs (the
 * first with --assume-base). Returns a reader of its marker names.
 */
async function chainTo(
  src: ObjectStore,
  target: ObjectStore,
  cps: readonly number[],
  upTo: number,
): Promise<() => Promise<string[]>> {
  const first = await contentAt(src, cps[0]);
  await Volume.create(target, { size: first.length, segmentSize: 1 * MiB });
  const w = await Volume.open(target, { flushIntervalMs: 0 });
  await w.write(0, first);
  await w.close();
  for (let k = 0; k < upTo; k++)
    await importDiff(streamOf(await diffBytes(src, cps[k]!, cps[k + 1]!)), target, {
      assumeBase: k === 0,
    });
  const uuid = await uuidOf(src);
  return async () => (await listMarkers(target, uuid)).map((m) => m.name);
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

    // Apply the first diff, then change the target where the next diff does not write: the
    // next diff is refused until the target is restored to its marker.
    const first = await importDiff(streamOf(d01), dst, { assumeBase: true });
    const [spot] = await untouchedBlocks(d12, (await readHead(dst)).head.size);
    assert.ok(spot !== undefined, 'the next diff leaves a block alone');
    const v = await Volume.open(dst, { flushIntervalMs: 0 });
    await v.write(spot, Buffer.alloc(4096, 0xee));
    await v.close();
    await refused(
      streamOf(d12),
      'PRECONDITION_FAILED',
      /was changed after it received .*, and not only where this diff writes/,
    );
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

  it('an import killed half way finishes when run again; a change beside it is still refused', async () => {
    // sourceHistory's checkpoints: 1 grows the volume, 3 shrinks it, 4 grows it again.
    const cases = [
      { to: 2, n: 1, prefix: SEGMENT_PREFIX, what: 'same size' },
      { to: 3, n: 1, prefix: SEGMENT_PREFIX, what: 'a shrink' },
      { to: 4, n: 1, prefix: SEGMENT_PREFIX, what: 'a grow' },
      { to: 2, n: 0, prefix: SNAPSHOT_PREFIX, what: 'killed before its marker' },
      { to: 1, n: 1, prefix: SEGMENT_PREFIX, what: 'the first diff (--assume-base), a grow' },
      {
        to: 2,
        n: 2,
        prefix: SEGMENT_PREFIX,
        what: 'a full stream (its grow and a segment)',
        full: true,
      },
    ];
    for (const [i, c] of cases.entries()) {
      const src = MemStore.isolated(`mem://diff-src7-${i}/`);
      const mem = MemStore.isolated(`mem://diff-dst7-${i}/`);
      const cps = await sourceHistory(src, 5, 21 + i, 48);
      const uuid = await uuidOf(src);
      let markers: () => Promise<string[]>;
      if (c.full) {
        await Volume.create(mem, { size: 1 * MiB, segmentSize: 1 * MiB });
        markers = async () => (await listMarkers(mem, uuid)).map((m) => m.name);
      } else markers = await chainTo(src, mem, cps, c.to - 1);
      const d = await diffBytes(src, c.full ? null : cps[c.to - 1]!, cps[c.to]!);
      const before = await contentAt(mem);
      const want = await contentAt(src, cps[c.to]);
      // Without a marker to start from, the import pins its start as one (then deleted).
      const first = c.to === 1 && !c.full;
      const markersBefore = await markers();
      const pinned = first || c.full ? [markerName(uuid, c.full ? 0 : cps[0]!)] : markersBefore;
      const opts = { assumeBase: first };

      const dying = new DyingStore(mem);
      dying.dieAfter(c.n, c.prefix);
      await assert.rejects(importDiff(streamOf(d), dying.store, opts), (e) => {
        assert.ok(isHyperError(e), String(e));
        assert.match(
          e.message,
          /may hold part of the diff|marker snapshot .* could not be written/,
        );
        return true;
      });
      dying.revive();
      // What the next writer sees (rolled forward past the head): part of the diff, or (killed
      // before its marker) all of it.
      const partial = await contentAt(mem);
      assert.notEqual(sha(partial), sha(before), `${c.what}: part of the diff landed`);
      if (c.prefix === SEGMENT_PREFIX) assert.notEqual(sha(partial), sha(want), c.what);
      else assert.equal(sha(partial), sha(want), c.what);
      assert.deepEqual(await markers(), pinned, `${c.what}: markers as before, or its pin`);

      // A change beside it, where the diff does not write: refused.
      const size = (await readHead(mem)).head.size;
      const [spot] = await untouchedBlocks(d, Math.min(size, want.length));
      assert.ok(spot !== undefined, c.what);
      const v = await Volume.open(mem, { flushIntervalMs: 0, force: true });
      const old = await v.read(spot, 4096);
      await v.write(spot, Buffer.alloc(4096, 0xee));
      await v.flush();
      await assert.rejects(importDiff(streamOf(d), mem, { ...opts, force: true }), (e) => {
        assert.ok(isHyperError(e, 'PRECONDITION_FAILED'), String(e));
        assert.match(e.message, /not only where this diff writes/, c.what);
        return true;
      });
      // Put back (another change, the same content): run again, the import finishes.
      await v.write(spot, old);
      await v.close();
      const r = await importDiff(streamOf(d, 5), mem, { ...opts, force: true });
      assert.equal(r.base.kind, 'resumed', c.what);
      assert.equal(sha(await contentAt(mem)), sha(want), `${c.what}: byte for byte`);
      assert.equal((await readHead(mem)).head.size, want.length, c.what);
      assert.deepEqual(await markers(), [markerName(uuid, cps[c.to]!)], c.what);
      // And the chain goes on from there.
      if (c.to < 4) {
        await importDiff(streamOf(await diffBytes(src, cps[c.to]!, cps[c.to + 1]!)), mem);
        assert.equal(sha(await contentAt(mem)), sha(await contentAt(src, cps[c.to + 1])));
      }
    }
  });

  it('randomized: whatever part of a diff a killed import left, running it again gives its to-checkpoint', async (t) => {
    // HYPER_DIFF_KILL_FIRST_SEED / HYPER_DIFF_KILL_SEEDS sweep more seeds.
    const firstSeed = Number(process.env.HYPER_DIFF_KILL_FIRST_SEED ?? 1);
    const seeds = Number(process.env.HYPER_DIFF_KILL_SEEDS ?? 10);
    const seen = { resumed: 0, marker: 0, refused: 0, landed: 0 };
    for (let seed = firstSeed; seed < firstSeed + seeds; seed++) {
      const rand = rng(seed);
      const tag = `seed ${seed}`;
      const src = MemStore.isolated(`mem://diff-src8-${seed}/`);
      const mem = MemStore.isolated(`mem://diff-dst8-${seed}/`);
      const cps = await sourceHistory(src, 5, 100 + seed, 16 + Math.floor(rand() * 40));
      const uuid = await uuidOf(src);
      // The diff cut short ends at checkpoint `to` (1: the first of the chain, --assume-base;
      // or a full stream into an empty volume).
      const to = 1 + Math.floor(rand() * 4);
      const full = rand() < 0.2;
      const first = to === 1 && !full;
      let markers: () => Promise<string[]>;
      if (full) {
        await Volume.create(mem, { size: 1 * MiB, segmentSize: 1 * MiB });
        markers = async () => (await listMarkers(mem, uuid)).map((m) => m.name);
      } else markers = await chainTo(src, mem, cps, to - 1);
      const d = await diffBytes(src, full ? null : cps[to - 1]!, cps[to]!);
      const want = await contentAt(src, cps[to]);

      const dying = new DyingStore(mem);
      const n = Math.floor(rand() * 3);
      dying.dieAfter(n, rand() < 0.2 ? SNAPSHOT_PREFIX : SEGMENT_PREFIX);
      const opts = { assumeBase: first };
      const ok = await importDiff(streamOf(d, seed), dying.store, opts).then(
        () => true,
        (e: unknown) => {
          assert.ok(isHyperError(e, 'STORE_UNAVAILABLE'), `${tag}: ${String(e)}`);
          return false;
        },
      );
      dying.revive();
      if (ok) {
        // Nothing cut it short: it is done, and running it again is refused as done.
        seen.landed++;
        assert.equal(sha(await contentAt(mem)), sha(want), tag);
        await assert.rejects(importDiff(streamOf(d), mem, { ...opts, force: true }), (e) => {
          assert.ok(isHyperError(e, 'PRECONDITION_FAILED'), `${tag}: ${String(e)}`);
          assert.match(e.message, full ? /holds no data/ : /already holds checkpoint/, tag);
          return true;
        });
        continue;
      }
      // Now and then the dead import's lease taken over (it rolls the volume forward), a
      // compaction of the target, and a write where the diff does not write.
      if (rand() < 0.5) await (await Volume.open(mem, { force: true })).close();
      if (rand() < 0.3) {
        await (await Volume.open(mem, { force: true })).close();
        await compactVolume(mem, { keepLast: 1, minLive: 1, graceMs: 0 });
      }
      let putBack: (() => Promise<void>) | undefined;
      // (Only where a marker shows the base: one that died writing its pin left the target as
      // it was, a matter of --assume-base or of an empty volume again.)
      const based = (await markers()).includes(markerName(uuid, full ? 0 : cps[to - 1]!));
      if (rand() < 0.3 && based) {
        const size = (await readHead(mem)).head.size;
        const free = await untouchedBlocks(d, Math.min(size, want.length));
        const spot = free[Math.floor(rand() * free.length)];
        if (spot !== undefined) {
          const v = await Volume.open(mem, { flushIntervalMs: 0, force: true });
          const old = await v.read(spot, 4096);
          await v.write(spot, Buffer.alloc(4096, 0xee));
          await v.close();
          if (!old.equals(Buffer.alloc(4096, 0xee)))
            putBack = async () => {
              const u = await Volume.open(mem, { flushIntervalMs: 0 });
              await u.write(spot, old);
              await u.close();
            };
        }
      }
      if (putBack) {
        const before = await snapshotOf(mem);
        await assert.rejects(importDiff(streamOf(d), mem, { ...opts, force: true }), (e) => {
          assert.ok(isHyperError(e, 'PRECONDITION_FAILED'), `${tag}: ${String(e)}`);
          assert.match(e.message, /not only where this diff writes/, tag);
          return true;
        });
        assert.deepEqual(await snapshotOf(mem), before, `${tag}: the refusal wrote nothing`);
        seen.refused++;
        await putBack();
      }
      const r = await importDiff(streamOf(d, seed + 1), mem, { ...opts, force: true });
      // (Nothing landed: its start, by the marker it pinned, or as before it: an empty volume,
      // or --assume-base when it died writing its pin.)
      seen[r.base.kind === 'resumed' ? 'resumed' : 'marker']++;
      assert.ok(
        ['resumed', 'marker', 'empty', 'assumed'].includes(r.base.kind),
        `${tag}: ${r.base.kind}`,
      );
      assert.equal(sha(await contentAt(mem)), sha(want), `${tag}: byte for byte`);
      assert.equal((await readHead(mem)).head.size, want.length, tag);
      assert.deepEqual(await markers(), [markerName(uuid, cps[to]!)], tag);
    }
    t.diagnostic(`seeds ${firstSeed}..${firstSeed + seeds - 1}: ${JSON.stringify(seen)}`);
    // The seeds cover each way it can go (with the default seeds).
    if (seeds >= 10) assert.ok(seen.resumed > 0 && seen.refused > 0, JSON.stringify(seen));
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
