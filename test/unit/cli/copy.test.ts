import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { copyVolume } from '../../../src/cli/copy.js';
import { isHyperError } from '../../../src/errors.js';
import { addKey, clearKeys } from '../../../src/format/keyring.js';
import {
  createSnapshot,
  deleteSnapshot,
  listSnapshots,
} from '../../../src/format/volume/history.js';
import { openStore } from '../../../src/format/store/index.js';
import type { ObjectStore } from '../../../src/format/store/types.js';
import { Volume } from '../../../src/format/volume/volume.js';

const KiB = 1024;
const MiB = 1024 * KiB;
let n = 0;
const fresh = (what: string): Promise<ObjectStore> =>
  openStore(`mem://copy-${what}-${process.pid}-${++n}/`);

/** The whole content of the volume at `store` (its current checkpoint, or `at`). */
async function content(store: ObjectStore, at?: number): Promise<Buffer> {
  const v = await Volume.open(store, { readOnly: true, ...(at ? { at: { checkpoint: at } } : {}) });
  try {
    return await v.read(0, v.info.size);
  } finally {
    await v.close();
  }
}

/**
 * A 4 MiB source open for writing, and `named(...names)`: flush it, name its checkpoint
 * `names`, and note in `at` what each of them reads.
 */
async function withHistory(): Promise<{
  src: ObjectStore;
  v: Volume;
  at: Record<string, Buffer>;
  named: (...names: string[]) => Promise<void>;
}> {
  const src = await fresh('src');
  await Volume.create(src, { size: 4 * MiB });
  const v = await Volume.open(src);
  const at: Record<string, Buffer> = {};
  const named = async (...names: string[]): Promise<void> => {
    await v.flush();
    for (const name of names) await createSnapshot(src, name);
    const now = await v.read(0, v.info.size);
    for (const name of names) at[name] = now;
  };
  return { src, v, at, named };
}

/** A copy of `src` with its snapshots into a new `dst`, stopped once `stop` bytes are done: its ABORTED suggestion. */
async function stoppedSnapshotCopy(
  src: ObjectStore,
  dst: ObjectStore,
  stop: number,
): Promise<string> {
  const ac = new AbortController();
  let suggestion: string | undefined;
  await assert.rejects(
    copyVolume(src, dst, {
      create: {},
      snapshots: true,
      chunkSize: 256 * KiB,
      concurrency: 1,
      signal: ac.signal,
      onProgress: (done) => {
        if (done >= stop) ac.abort();
      },
    }),
    (e) => {
      suggestion = isHyperError(e, 'ABORTED') ? (e.suggestion ?? '') : undefined;
      return suggestion !== undefined;
    },
  );
  return suggestion ?? '';
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * A 6 MiB source: random data in [0, 1 MiB), a hole to 3 MiB, written zeros in [3, 3.5 MiB),
 * random data in [3.5, 4 MiB) and a partial block at 5 MiB + 100.
 */
async function source(options: Parameters<typeof Volume.create>[1] = {}): Promise<ObjectStore> {
  const s = await fresh('src');
  await Volume.create(s, { size: 6 * MiB, ...options });
  const v = await Volume.open(s);
  await v.write(0, randomBytes(MiB));
  await v.write(3 * MiB, Buffer.alloc(MiB / 2));
  await v.write(3 * MiB + MiB / 2, randomBytes(MiB / 2));
  await v.write(5 * MiB + 100, randomBytes(3000));
  await v.close();
  return s;
}

describe('copyVolume', () => {
  it('copies into a new volume laid out like the source, storing no holes or zeros', async () => {
    const src = await source({ dataBlockSize: 8 * KiB, segmentSize: 2 * MiB, compression: 'zstd' });
    const dst = await fresh('dst');
    let last = 0;
    const r = await copyVolume(src, dst, {
      create: {},
      chunkSize: 256 * KiB,
      concurrency: 3,
      onProgress: (done, total) => {
        assert.ok(done >= last && done <= total);
        last = done;
      },
    });
    assert.equal(r.created, true);
    assert.equal(last, 6 * MiB);
    assert.equal(r.stats.bytesDone, 6 * MiB);
    assert.ok(sha(await content(dst)) === sha(await content(src)), 'same bytes');
    const info = r.target;
    assert.deepEqual(
      [info.size, info.dataBlockSize, info.segmentSize, info.compression, info.dedup],
      [6 * MiB, 8 * KiB, 2 * MiB, 'zstd', false],
    );
    // Data: 1 MiB + 0.5 MiB + the block holding the partial write; no zeros stored.
    assert.equal(info.mappedBlocks, (MiB + MiB / 2 + 8 * KiB) / (8 * KiB));
    assert.equal(r.stats.dataBytes, info.mappedBlocks * 8 * KiB);
    assert.equal(r.stats.dataBytes + r.stats.zeroBytes, 6 * MiB);
  });

  it('copies an older checkpoint (at) and leaves the source as it was', async () => {
    const src = await source();
    const before = await Volume.open(src, { readOnly: true });
    const cp = before.info.checkpoint;
    await before.close();
    const old = await content(src);
    const w = await Volume.open(src);
    await w.write(0, randomBytes(2 * MiB));
    await w.close();
    const now = await content(src);
    const dst = await fresh('dst');
    const r = await copyVolume(src, dst, { at: { checkpoint: cp }, create: {} });
    assert.equal(r.source.checkpoint, cp);
    assert.ok((await content(dst)).equals(old));
    assert.ok((await content(src)).equals(now), 'the source did not change');
  });

  it('zeroes what the source does not map in a target that holds data, and keeps its tail', async () => {
    const src = await source();
    const dst = await fresh('dst');
    await Volume.create(dst, { size: 8 * MiB });
    const t = await Volume.open(dst);
    const junk = randomBytes(8 * MiB);
    await t.write(0, junk);
    await t.close();
    const r = await copyVolume(src, dst);
    assert.equal(r.created, false);
    const got = await content(dst);
    assert.ok(got.subarray(0, 6 * MiB).equals(await content(src)), 'the source, holes included');
    assert.ok(got.subarray(6 * MiB).equals(junk.subarray(6 * MiB)), 'past it, what it held');
  });

  it('refuses a smaller target, the same volume, and a missing one without create', async () => {
    const src = await source();
    const small = await fresh('small');
    await Volume.create(small, { size: MiB });
    await assert.rejects(copyVolume(src, small), (e) => isHyperError(e, 'OUT_OF_RANGE'));
    assert.equal((await content(small)).equals(Buffer.alloc(MiB)), true, 'nothing written');
    await assert.rejects(copyVolume(src, src), (e) => isHyperError(e, 'INVALID_ARGUMENT'));
    await assert.rejects(
      copyVolume(src, await fresh('none')),
      (e) => isHyperError(e, 'VOLUME_NOT_FOUND') && /--create/.test(e.suggestion ?? ''),
    );
    const exists = await fresh('exists');
    await Volume.create(exists, { size: 6 * MiB });
    await assert.rejects(copyVolume(src, exists, { create: {} }), (e) =>
      isHyperError(e, 'VOLUME_EXISTS'),
    );
  });

  it('interrupted, commits what it copied; the same copy again finishes it', async () => {
    const src = await fresh('src');
    await Volume.create(src, { size: 16 * MiB });
    const w = await Volume.open(src);
    await w.write(0, randomBytes(16 * MiB));
    await w.close();
    const dst = await fresh('dst');
    const ac = new AbortController();
    await assert.rejects(
      copyVolume(src, dst, {
        create: {},
        chunkSize: 256 * KiB,
        concurrency: 2,
        signal: ac.signal,
        onProgress: (done) => {
          if (done >= 4 * MiB) ac.abort();
        },
      }),
      (e) => isHyperError(e, 'ABORTED') && /without --create/.test(e.suggestion ?? ''),
    );
    const partial = await content(dst);
    const want = await content(src);
    assert.ok(!partial.equals(want), 'stopped part way');
    // Whole chunks, in order of their offsets as far as they got: a prefix of the source, then zeros.
    let k = 0;
    while (k < want.length && partial[k] === want[k]) k++;
    assert.ok(k >= 4 * MiB, `${k} bytes copied`);
    assert.ok(partial.subarray(k + 256 * KiB).equals(Buffer.alloc(want.length - k - 256 * KiB)));
    const r = await copyVolume(src, dst);
    assert.equal(r.created, false);
    assert.ok((await content(dst)).equals(want));
  });

  it('copies the named snapshots oldest first, each as the changes since the one before', async () => {
    const { src, v, at, named } = await withHistory();
    await v.write(0, randomBytes(MiB));
    await named('a');
    await v.write(MiB / 2, randomBytes(MiB));
    await v.writeZeroes(0, 64 * KiB);
    await named('b', 'b2');
    // A shrink and a grow between snapshots: the target follows the sizes.
    await v.resize(MiB, { allowShrink: true });
    await v.resize(6 * MiB);
    await v.write(5 * MiB, randomBytes(100_000));
    await named('c');
    await v.write(2 * MiB, randomBytes(MiB));
    const current = await v.read(0, v.info.size);
    await v.close();

    const dst = await fresh('dst');
    await assert.rejects(copyVolume(src, dst, { snapshots: true }), (e) =>
      isHyperError(e, 'VOLUME_NOT_FOUND'),
    );
    const r = await copyVolume(src, dst, { create: {}, snapshots: true, chunkSize: 256 * KiB });
    assert.deepEqual(
      r.snapshots.map((s) => s.name),
      ['a', 'b', 'b2', 'c'],
    );
    assert.equal(r.snapshots[1]?.checkpoint, r.snapshots[2]?.checkpoint);
    const byName = new Map((await listSnapshots(dst)).map((s) => [s.name, s.checkpoint]));
    for (const name of ['a', 'b', 'c']) {
      const got = await content(dst, byName.get(name));
      assert.ok(got.equals(at[name] as Buffer), `snapshot ${name}`);
    }
    assert.ok((await content(dst)).equals(current), 'the current checkpoint');
    // Each step wrote its changes only: far less than the sum of the four contents.
    assert.ok(r.stats.dataBytes < 4 * MiB, `${r.stats.dataBytes} bytes written`);

    // Snapshots after the checkpoint copied (--at) are left out.
    const older = await fresh('older');
    const o = await copyVolume(src, older, { create: {}, snapshots: true, at: { snapshot: 'b' } });
    assert.deepEqual(
      o.snapshots.map((s) => s.name),
      ['a', 'b', 'b2'],
    );
    assert.ok((await content(older)).equals(at.b as Buffer));
  });

  it('finishes an interrupted copy of the snapshots, and refuses a target that is not one', async () => {
    const { src, v, at, named } = await withHistory();
    await v.write(0, randomBytes(2 * MiB));
    await named('a');
    await v.write(MiB, randomBytes(2 * MiB));
    await v.writeZeroes(0, 256 * KiB);
    await named('b', 'b2');
    await v.resize(3 * MiB, { allowShrink: true });
    await v.write(512 * KiB, randomBytes(MiB));
    await named('c');
    await v.write(2 * MiB, randomBytes(MiB / 2));
    at.current = await v.read(0, v.info.size);
    await v.close();
    const verify = async (dst: ObjectStore): Promise<void> => {
      const byName = new Map((await listSnapshots(dst)).map((s) => [s.name, s.checkpoint]));
      assert.deepEqual([...byName.keys()].sort(), ['a', 'b', 'b2', 'c']);
      for (const name of ['a', 'b', 'b2', 'c'])
        assert.ok((await content(dst, byName.get(name))).equals(at[name] as Buffer), name);
      assert.ok((await content(dst)).equals(at.current as Buffer), 'the current checkpoint');
    };
    const whole = await fresh('whole');
    let total = 0;
    await copyVolume(src, whole, {
      create: {},
      snapshots: true,
      onProgress: (_, t) => {
        total = t;
      },
    });
    await verify(whole);
    // Stopped at points in each of the four steps.
    for (const stop of [0.1, 0.4, 0.6, 0.8, 0.95].map((f) => f * total)) {
      const dst = await fresh('dst');
      const suggestion = await stoppedSnapshotCopy(src, dst, stop);
      const had = (await listSnapshots(dst)).length;
      if (had === 0) {
        // Before the first snapshot was named: not resumable, and said so.
        assert.match(suggestion, /delete the target/);
        await assert.rejects(copyVolume(src, dst, { snapshots: true }), (e) =>
          isHyperError(e, 'INVALID_ARGUMENT'),
        );
        continue;
      }
      assert.match(suggestion, /without --create \(with --snapshots\)/);
      const r = await copyVolume(src, dst, { snapshots: true, chunkSize: 256 * KiB });
      assert.equal(r.created, false);
      assert.equal(had + r.snapshots.length, 4, `stopped at ${stop}`);
      await verify(dst);
    }

    // Cut short while naming a step's snapshots: the rest are named at the same checkpoint.
    const older = await fresh('older');
    const cut = await copyVolume(src, older, {
      create: {},
      snapshots: true,
      at: { snapshot: 'b' },
    });
    const b = cut.snapshots.find((s) => s.name === 'b');
    await deleteSnapshot(older, 'b2');
    const again = await copyVolume(src, older, { snapshots: true, at: { snapshot: 'b' } });
    assert.deepEqual(
      again.snapshots.map((s) => [s.name, s.checkpoint]),
      [['b2', b?.checkpoint]],
    );
    assert.equal(again.stats.dataBytes, 0, 'nothing else to write');
    assert.ok((await content(older, b?.checkpoint)).equals(at.b2 as Buffer));
    assert.ok((await content(older)).equals(at.b2 as Buffer));

    // Written since by someone else, outside what the next step changes: that step is copied
    // whole, and the result is exact all the same.
    const meddled = await fresh('meddled');
    await stoppedSnapshotCopy(src, meddled, 3 * MiB);
    const m = await Volume.open(meddled);
    await m.write(3 * MiB + MiB / 2, randomBytes(64 * KiB));
    await m.close();
    await copyVolume(src, meddled, { snapshots: true });
    await verify(meddled);

    // Not an interrupted copy of these snapshots: refused, with nothing written.
    const plain = await fresh('plain');
    await copyVolume(src, plain, { create: {} });
    const foreign = await fresh('foreign');
    await copyVolume(src, foreign, { create: {}, snapshots: true });
    await createSnapshot(foreign, 'elsewhere');
    const gap = await fresh('gap');
    await copyVolume(src, gap, { create: {}, snapshots: true });
    await deleteSnapshot(gap, 'a');
    for (const [dst, why] of [
      [plain, /holds no snapshot/],
      [foreign, /elsewhere is not one of the source's/],
      [gap, /lacks snapshot a, older than its c/],
    ] as const) {
      const before = await content(dst);
      await assert.rejects(
        copyVolume(src, dst, { snapshots: true }),
        (e) => isHyperError(e, 'INVALID_ARGUMENT') && why.test(e.message),
      );
      assert.ok((await content(dst)).equals(before));
    }
  });

  it('copies an encrypted volume with its key, or into a plain one', async () => {
    const key = randomBytes(32);
    clearKeys();
    addKey(key);
    try {
      const src = await source({ encryption: 'xchacha20-poly1305', key });
      const same = await fresh('enc');
      const r = await copyVolume(src, same, { create: {} });
      assert.equal(r.target.encryption, 'xchacha20-poly1305');
      assert.equal(
        r.target.keyId,
        await Volume.open(src, { readOnly: true }).then(async (v) => {
          const id = v.info.keyId;
          await v.close();
          return id;
        }),
      );
      const plain = await fresh('plain');
      const p = await copyVolume(src, plain, {
        create: { encryption: 'none', compression: 'none' },
      });
      assert.equal(p.target.encryption, 'none');
      const want = await content(src);
      assert.ok((await content(same)).equals(want));
      assert.ok((await content(plain)).equals(want));
      await assert.rejects(
        copyVolume(src, await fresh('nokey'), { create: { encryption: 'aes-256-gcm' } }),
        (e) => isHyperError(e, 'INVALID_ARGUMENT') && /--key-file/.test(e.suggestion ?? ''),
      );
    } finally {
      clearKeys();
    }
  });
});
