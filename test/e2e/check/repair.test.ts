/**
 * Errors that lead somewhere: a damaged data block names the volume range and the segment
 * and `file check --deep` names a checkpoint to restore; a damaged or missing head is rebuilt
 * by `file repair` from the newest intact segment.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../src/errors.js';
import { decodeSegmentHeader } from '../../../src/format/codec/segment.js';
import { openStore } from '../../../src/format/store/index.js';
import { Lease, processHolder } from '../../../src/format/volume/lease.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { hyper, show, tempDir } from '../../helpers/cli.js';

const KiB = 1024;

interface Vol {
  dir: string;
  url: string;
  /** Image content of each import, in order; each import is one checkpoint. */
  images: Buffer[];
  checkpoints: number[];
}

/** A file:// volume with three imports of 256 KiB of random data at offset 0 (a checkpoint each). */
async function build(dir: string): Promise<Vol> {
  const url = `file://${dir}/vol/`;
  const c = await hyper(['file', 'create', url, '--size', '4M']);
  assert.equal(c.code, 0, show(c));
  const images: Buffer[] = [];
  const checkpoints: number[] = [];
  for (let i = 0; i < 3; i++) {
    const img = randomBytes(256 * KiB);
    const path = join(dir, `img${i}`);
    await writeFile(path, img);
    const r = await hyper(['file', 'import', path, url]);
    assert.equal(r.code, 0, show(r));
    const st = await hyper(['file', 'stat', url, '--json']);
    checkpoints.push((JSON.parse(st.stdout) as { checkpoint: number }).checkpoint);
    images.push(img);
  }
  return { dir, url, images, checkpoints };
}

const segPath = (v: Vol, key: string): string => join(v.dir, 'vol', key);

async function readAll(url: string, length: number): Promise<Buffer> {
  const store = await openStore(url);
  const vol = await Volume.open(store, { readOnly: true });
  try {
    return await vol.read(0, length);
  } finally {
    await vol.close();
    await store.close();
  }
}

describe('errors that lead somewhere', () => {
  it('a damaged data block names the volume range and segment; check --deep names a restore checkpoint', async (t) => {
    const v = await build(await tempDir(t));
    const [, second, third] = v.checkpoints as [number, number, number];
    const key = `seg/${third.toString(16).padStart(16, '0')}`;
    const path = segPath(v, key);
    const bytes = await readFile(path);
    const h = decodeSegmentHeader(bytes);
    // Flip a byte inside the 10th stored data block: which lba that is comes from the header.
    const bs = h.dataBlockSize;
    const at = h.dataOffset + 9 * bs + 100;
    const lba = h.lbas[9] as number;
    bytes.writeUInt8((bytes[at] as number) ^ 0xff, at);
    await writeFile(path, bytes);
    const range = `volume bytes ${lba * bs}..${(lba + 1) * bs}`;

    // Through the library.
    await assert.rejects(readAll(v.url, 256 * KiB), (e: unknown) => {
      assert.ok(isHyperError(e, 'CHECKSUM_MISMATCH'), String(e));
      assert.equal(e.key, key);
      assert.ok(e.message.includes(range), e.message);
      assert.ok(e.message.includes(key), e.message);
      assert.match(e.suggestion ?? '', /hyper file check --deep/);
      return true;
    });

    // Through the CLI: exit 6 (data), the same names, in text and JSON.
    const out = join(v.dir, 'out.img');
    const ex = await hyper(['file', 'export', v.url, out]);
    assert.equal(ex.code, 6, show(ex));
    assert.ok(ex.stderr.includes(range), ex.stderr);
    assert.ok(ex.stderr.includes(key), ex.stderr);
    assert.match(ex.stderr, /hyper file check --deep/);
    const exj = await hyper(['file', 'export', v.url, out, '--json']);
    assert.equal(exj.code, 6, show(exj));
    const err = (JSON.parse(exj.stdout) as { error: { code: string; key: string } }).error;
    assert.equal(err.code, 'CHECKSUM_MISMATCH');
    assert.equal(err.key, key);

    // The deep check finds it and names the checkpoint before the damaged one.
    const ck = await hyper(['file', 'check', v.url, '--deep', '--json']);
    assert.equal(ck.code, 6, show(ck));
    const r = JSON.parse(ck.stdout) as {
      clean: boolean;
      restoreCheckpoint: number | null;
      problems: { kind: string; key: string }[];
    };
    assert.equal(r.clean, false);
    assert.ok(
      r.problems.some((p) => p.kind === 'corrupt' && p.key === key),
      ck.stdout,
    );
    assert.equal(r.restoreCheckpoint, second);
    const text = await hyper(['file', 'check', v.url, '--deep']);
    assert.equal(text.code, 6);
    assert.ok(text.stdout.includes(`snapshot restore ${v.url} --to ${second}`), text.stdout);

    // Following the advice gives back the data of that checkpoint, readable and clean.
    const rs = await hyper(['snapshot', 'restore', v.url, '--to', String(second)]);
    assert.equal(rs.code, 0, show(rs));
    assert.ok((await readAll(v.url, 256 * KiB)).equals(v.images[1] as Buffer));
  });

  it('file repair rebuilds a damaged or missing head from the newest intact segment', async (t) => {
    const v = await build(await tempDir(t));
    const third = v.checkpoints[2] as number;
    const headPath = join(v.dir, 'vol', 'head');
    const original = await readFile(headPath);

    // Intact: nothing to repair.
    const ok = await hyper(['file', 'repair', v.url, '--json']);
    assert.equal(ok.code, 0, show(ok));
    const okr = JSON.parse(ok.stdout) as { head: string; applied: boolean; checkpoint: number };
    assert.deepEqual([okr.head, okr.applied, okr.checkpoint], ['intact', false, third]);

    for (const damage of ['garbage', 'delete'] as const) {
      if (damage === 'garbage') await writeFile(headPath, randomBytes(original.length));
      else await rm(headPath);
      const st = await hyper(['file', 'stat', v.url]);
      assert.notEqual(st.code, 0, show(st));
      if (damage === 'garbage') assert.match(st.stderr, /hyper file repair/);

      // Dry run: says what it would write, writes nothing.
      const before = damage === 'garbage' ? await readFile(headPath) : undefined;
      const dry = await hyper(['file', 'repair', v.url]);
      assert.equal(dry.code, 0, show(dry));
      assert.ok(dry.stdout.includes(`checkpoint ${third}`), dry.stdout);
      assert.ok(dry.stdout.includes(`seg/${third.toString(16).padStart(16, '0')}`), dry.stdout);
      if (before) assert.ok((await readFile(headPath)).equals(before));
      else assert.equal((await readdir(join(v.dir, 'vol'))).includes('head'), false);

      const ap = await hyper(['file', 'repair', v.url, '--apply', '--json']);
      assert.equal(ap.code, 0, show(ap));
      const r = JSON.parse(ap.stdout) as { head: string; applied: boolean; checkpoint: number };
      assert.deepEqual(
        [r.head, r.applied, r.checkpoint],
        [damage === 'garbage' ? 'damaged' : 'missing', true, third],
      );
      assert.ok((await readFile(headPath)).equals(original), 'the committed head, byte for byte');
      const st2 = await hyper(['file', 'stat', v.url, '--json']);
      assert.equal(st2.code, 0, show(st2));
      assert.equal((JSON.parse(st2.stdout) as { checkpoint: number }).checkpoint, third);
      assert.ok((await readAll(v.url, 256 * KiB)).equals(v.images[2] as Buffer));
      const ck = await hyper(['file', 'check', v.url, '--deep']);
      assert.equal(ck.code, 0, show(ck));
      assert.match(ck.stdout, /^Clean/);
    }
  });

  it('file repair skips a damaged newer segment, says so, and refuses while a lease is live', async (t) => {
    const v = await build(await tempDir(t));
    const [, second, third] = v.checkpoints as [number, number, number];
    const key3 = `seg/${third.toString(16).padStart(16, '0')}`;
    const p3 = segPath(v, key3);
    const bytes = await readFile(p3);
    bytes.writeUInt8((bytes.at(-5) as number) ^ 0xff, bytes.length - 5); // a data block
    await writeFile(p3, bytes);
    await writeFile(join(v.dir, 'vol', 'head'), Buffer.from('not a head'));

    // A live lease: a writer holds the volume (damaged head or not, the lease is its own object).
    const store = await openStore(v.url);
    const lease = await Lease.acquire(store, {
      holder: processHolder('test'),
      ttlMs: 60_000,
      force: false,
      minEpoch: 0,
    });
    try {
      const held = await hyper(['file', 'repair', v.url, '--apply', '--json']);
      assert.equal(held.code, 4, show(held));
      assert.equal(
        (JSON.parse(held.stdout) as { error: { code: string } }).error.code,
        'LEASE_HELD',
      );
    } finally {
      await lease.release();
    }
    await store.close();

    const ap = await hyper(['file', 'repair', v.url, '--apply', '--json']);
    assert.equal(ap.code, 0, show(ap));
    const r = JSON.parse(ap.stdout) as {
      checkpoint: number;
      skippedSegments: { key: string; message: string }[];
    };
    assert.equal(r.checkpoint, second);
    assert.deepEqual(
      r.skippedSegments.map((s) => s.key),
      [key3],
    );
    assert.match(r.skippedSegments[0]?.message ?? '', /checksum/);
    assert.ok((await readAll(v.url, 256 * KiB)).equals(v.images[1] as Buffer));
    // The damaged newer segment is now an uncommitted flush, not damage.
    const ck = await hyper(['file', 'check', v.url, '--json']);
    assert.equal(ck.code, 0, show(ck));
  });

  it('file repair cuts a write-ahead log at a damaged record, after which the volume opens again', async (t) => {
    const dir = await tempDir(t);
    const url = `file://${dir}/vol/`;
    const walUrl = `file://${dir}/wal/`;
    assert.equal((await hyper(['file', 'create', url, '--size', '4M'])).code, 0);
    await mkdir(join(dir, 'wal'));
    // Four acknowledged writes, logged one record each, then a crash (nothing flushed).
    const store = await openStore(url);
    const a = await Volume.open(store, { walUrl, flushIntervalMs: 0 });
    for (let i = 0; i < 4; i++) await a.write(i * 4096, Buffer.alloc(4096, i + 1));
    const uuid = a.info.uuid;
    await a.abandon();
    await store.close();
    const logDir = join(dir, 'wal', uuid);
    const records = (await readdir(logDir)).sort();
    assert.equal(records.length, 5, `the record claimed at open and four writes: ${records}`);
    // The third write's record is damaged.
    const third = join(logDir, records[3] as string);
    const bytes = await readFile(third);
    bytes[bytes.length - 9] = (bytes[bytes.length - 9] as number) ^ 1;
    await writeFile(third, bytes);

    // A writer cannot open the volume; the error names the record and leads to the repair.
    const grow = await hyper(['file', 'set-len', url, '--size', '8M']);
    assert.equal(grow.code, 6, show(grow));
    assert.match(grow.stderr, new RegExp(`${records[3]}`));
    assert.match(grow.stderr, /hyper file repair/);
    // file check says the same.
    const ck = await hyper(['file', 'check', url]);
    assert.equal(ck.code, 6, show(ck));
    assert.match(ck.stdout, /write-ahead log cannot be replayed whole/);
    assert.match(ck.stdout, /shows the 2 records that --apply drops/);
    // A dry run names what --apply drops, and drops nothing.
    const dry = await hyper(['file', 'repair', url]);
    assert.equal(dry.code, 0, show(dry));
    assert.match(dry.stdout, /--apply drops 2 records \(4–5\)/);
    assert.equal((await readdir(logDir)).length, 5);
    const ap = await hyper(['file', 'repair', url, '--apply', '--json']);
    assert.equal(ap.code, 0, show(ap));
    const r = JSON.parse(ap.stdout) as {
      head: string;
      wal: {
        replayableRecordCount: number;
        damaged: { seq: number; kind: string };
        droppedRecords: number[];
        applied: boolean;
      };
    };
    assert.deepEqual(
      [
        r.head,
        r.wal.replayableRecordCount,
        r.wal.damaged.seq,
        r.wal.damaged.kind,
        r.wal.droppedRecords,
        r.wal.applied,
      ],
      ['intact', 3, 4, 'corrupt', [4, 5], true],
    );
    // Now it opens, with the writes logged before the damaged record.
    const again = await hyper(['file', 'set-len', url, '--size', '8M']);
    assert.equal(again.code, 0, show(again));
    const want = Buffer.alloc(4 * 4096);
    want.fill(1, 0, 4096);
    want.fill(2, 4096, 8192);
    assert.ok((await readAll(url, 4 * 4096)).equals(want));
    const clean = await hyper(['file', 'check', url, '--deep']);
    assert.equal(clean.code, 0, show(clean));
  });
});
