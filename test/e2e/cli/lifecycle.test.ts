/**
 * The life of a volume through the real CLI on a file:// store: create, stat, list, import an
 * image with holes, export it back (identical and sparse), resize, export a past checkpoint,
 * and delete, with the exit codes and JSON shapes scripts rely on.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileUrl, hyper, hyperJson, show } from '../../helpers/cli.js';

const MiB = 1024 * 1024;
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** 8 MiB of random data with holes: whole zero 64 KiB runs, odd-sized zero runs, and a zero tail. */
function imageWithHoles(): Buffer {
  const img = randomBytes(8 * MiB);
  for (let off = 0; off < img.length; off += 64 * 1024) {
    if ((off / (64 * 1024)) % 3 === 1) img.fill(0, off, off + 64 * 1024);
  }
  img.fill(0, 1 * MiB + 1000, 1 * MiB + 1000 + 9000); // spans blocks, unaligned
  img.fill(0, 7 * MiB); // last MiB
  return img;
}

interface ErrorOut {
  error: { kind: string; code: string; message: string; suggestion?: string; exitCode: number };
}

describe('hyper file: create → stat → list → import → export → set-len → delete', () => {
  let dir = '';
  let vols = '';
  let vol = '';
  let imagePath = '';
  let image: Buffer = Buffer.alloc(0);
  let importCheckpoint = 0;
  let importCheckpointTime = '';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hyper-cli-life-'));
    vols = fileUrl(join(dir, 'vols'));
    vol = `${vols}demo/`;
    imagePath = join(dir, 'disk.img');
    image = imageWithHoles();
    await writeFile(imagePath, image);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('creates a volume with 4 KiB blocks by default (creating the directory)', async () => {
    const out = await hyperJson(['file', 'create', vol, '--size', '8M']);
    assert.equal(out.url, vol);
    assert.equal(out.size, 8 * MiB);
    assert.equal(out.dataBlockSize, 4096);
    assert.equal(out.metaBlockSize, 4096);
    assert.match(String(out.createdAt), ISO);
    const again = await hyper(['file', 'create', vol, '--size', '8M']);
    assert.equal(again.code, 4, show(again));
    assert.match(again.stderr, /^Error \[VOLUME_EXISTS\]/m);
  });

  it('creates a volume with chosen block and segment sizes', async () => {
    const out = await hyperJson([
      'file',
      'create-opt',
      `${vols}big-blocks/`,
      '--data-block-size',
      '524288',
      '--meta-block-size',
      '8K',
      '--segment-size',
      '64M',
      '--size',
      '1T',
      '--compression',
      'zstd',
    ]);
    assert.equal(out.compression, 'zstd');
    assert.equal(out.formatVersion, 2);
    assert.equal(out.dataBlockSize, 512 * 1024);
    assert.equal(out.metaBlockSize, 8192);
    assert.equal(out.segmentSize, 64 * MiB);
    assert.equal(out.size, 1024 ** 4);
  });

  it('stats a volume: layout, checkpoint, space and lease', async () => {
    const st = await hyperJson(['file', 'stat', vol]);
    for (const k of [
      'uuid',
      'formatVersion',
      'checkpoint',
      'segmentCount',
      'storedBytes',
      'mappedBlockCount',
    ]) {
      assert.ok(k in st, `stat has ${k}`);
    }
    assert.equal(st.size, 8 * MiB);
    assert.equal(st.provisionedBytes, 8 * MiB);
    assert.equal(st.usedBytes, 0);
    assert.equal(st.dataBlockSize, 4096);
    assert.equal(typeof st.formatVersion, 'number');
    assert.match(String(st.checkpointTime), ISO);
    assert.ok((st.storedBytes as number) > 0);
    assert.ok(st.lease === null || typeof st.lease === 'object');
    const human = await hyper(['file', 'stat', vol]);
    assert.equal(human.code, 0, show(human));
    assert.match(human.stdout, /Size\s+│ 8 MiB \(8388608 bytes\)/);
    assert.match(human.stdout, /Provisioned/);
    assert.match(human.stdout, /Compression\s+│ lz4/);
    assert.match(human.stdout, /Lease/);
  });

  it('lists the volumes under a prefix', async () => {
    const out = await hyperJson<{ url: string; volumes: { name: string; size: number }[] }>([
      'file',
      'list',
      vols,
    ]);
    assert.equal(out.url, vols);
    assert.deepEqual(
      out.volumes.map((v) => [v.name, v.size]),
      [
        ['big-blocks/', 1024 ** 4],
        ['demo/', 8 * MiB],
      ],
    );
    const human = await hyper(['file', 'list', vols]);
    assert.equal(human.code, 0, show(human));
    assert.match(human.stdout, /NAME.*SIZE.*CHECKPOINT/);
    assert.match(human.stdout, /demo\/.*8 MiB/);
  });

  it('imports an image, storing no zero blocks', async () => {
    const out = await hyperJson(['file', 'import', imagePath, vol]);
    assert.equal(out.imageSize, 8 * MiB);
    assert.equal(out.created, false);
    assert.equal((out.dataBytes as number) + (out.zeroBytes as number), 8 * MiB);
    assert.ok((out.zeroBytes as number) >= 3 * MiB, `zeros skipped: ${String(out.zeroBytes)}`);
    importCheckpoint = out.checkpoint as number;
    importCheckpointTime = out.checkpointTime as string;
    const st = await hyperJson(['file', 'stat', vol]);
    assert.equal(st.usedBytes, out.dataBytes);
    assert.equal(st.checkpoint, importCheckpoint);
  });

  it('exports an identical, sparse image', async () => {
    const outPath = join(dir, 'out.img');
    const out = await hyperJson(['file', 'export', vol, outPath]);
    assert.equal(out.size, 8 * MiB);
    const exported = await readFile(outPath);
    assert.equal(sha256(exported), sha256(image));
    const st = await stat(outPath);
    assert.equal(st.size, 8 * MiB);
    assert.ok(
      st.blocks * 512 < 6 * MiB,
      `sparse: ${st.blocks * 512} bytes allocated of ${st.size}`,
    );
    const again = await hyper(['file', 'export', vol, outPath]);
    assert.equal(again.code, 4, show(again));
    assert.match(again.stderr, /--overwrite/);
    const over = await hyper(['file', 'export', vol, outPath, '--overwrite']);
    assert.equal(over.code, 0, show(over));
  });

  it('refuses to shrink without --allow-shrink (exit 2)', async () => {
    const r = await hyper(['file', 'set-len', vol, '--size', '4M']);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /--allow-shrink/);
    const st = await hyperJson(['file', 'stat', vol]);
    assert.equal(st.size, 8 * MiB);
  });

  it('shrinks with --allow-shrink; after growing back the dropped range reads as zeros', async () => {
    const shrunk = await hyperJson(['file', 'set-len', vol, '--size', '4M', '--allow-shrink']);
    assert.equal(shrunk.previousSize, 8 * MiB);
    assert.equal(shrunk.size, 4 * MiB);
    const grown = await hyperJson(['file', 'set-len', vol, '--size', '8M']);
    assert.equal(grown.size, 8 * MiB);
    const outPath = join(dir, 'regrown.img');
    await hyperJson(['file', 'export', vol, outPath]);
    const exported = await readFile(outPath);
    assert.equal(exported.length, 8 * MiB);
    assert.ok(
      exported.subarray(0, 4 * MiB).equals(image.subarray(0, 4 * MiB)),
      'the first 4 MiB are kept',
    );
    assert.ok(exported.subarray(4 * MiB).equals(Buffer.alloc(4 * MiB)), 'the rest reads as zeros');
  });

  it('exports an earlier checkpoint with --at (by number and by time)', async () => {
    const outPath = join(dir, 'at.img');
    const out = await hyperJson(['file', 'export', vol, outPath, '--at', String(importCheckpoint)]);
    assert.equal(out.checkpoint, importCheckpoint);
    assert.equal(sha256(await readFile(outPath)), sha256(image));
    const byTime = await hyperJson([
      'file',
      'export',
      vol,
      outPath,
      '--overwrite',
      '--at',
      importCheckpointTime,
    ]);
    assert.equal(byTime.checkpoint, importCheckpoint);
    assert.equal(sha256(await readFile(outPath)), sha256(image));
    const missing = await hyper(['file', 'export', vol, join(dir, 'x.img'), '--at', '999']);
    assert.equal(missing.code, 3, show(missing));
    assert.match(missing.stderr, /^Error \[CHECKPOINT_NOT_FOUND\]/m);
  });

  it('checks import sizes and existence', async () => {
    const missing = await hyper(['file', 'import', imagePath, `${vols}nope/`]);
    assert.equal(missing.code, 3, show(missing));
    assert.match(missing.stderr, /hyper file create/);
    const small = `${vols}small/`;
    await hyperJson(['file', 'create', small, '--size', '1M']);
    const tooBig = await hyper(['file', 'import', imagePath, small]);
    assert.equal(tooBig.code, 2, show(tooBig));
    assert.match(tooBig.stderr, /^Error \[OUT_OF_RANGE\]/m);
    const noImage = await hyper(['file', 'import', join(dir, 'absent.img'), small]);
    assert.equal(noImage.code, 2, show(noImage));
    assert.match(noImage.stderr, /no such file/);
  });

  it('imports with --create, sizing the volume from the image', async () => {
    const created = `${vols}created/`;
    const out = await hyperJson(['file', 'import', imagePath, created, '--create']);
    assert.equal(out.created, true);
    assert.equal(out.volumeSize, 8 * MiB);
    const outPath = join(dir, 'created.img');
    await hyperJson(['file', 'export', created, outPath]);
    assert.equal(sha256(await readFile(outPath)), sha256(image));
  });

  it('refuses to delete without --yes when stdin is not a terminal', async () => {
    const r = await hyper(['file', 'delete', vol]);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /--yes/);
    const st = await hyper(['file', 'stat', vol]);
    assert.equal(st.code, 0, 'the volume is still there');
  });

  it('deletes with --yes, then reports VOLUME_NOT_FOUND (exit 3) unless --if-exists', async () => {
    const out = await hyperJson(['file', 'delete', vol, '--yes']);
    assert.equal(out.deleted, true);
    assert.ok((out.deletedObjectCount as number) >= 3);
    const gone = await hyperJson<ErrorOut>(['file', 'stat', vol], 3);
    assert.equal(gone.error.code, 'VOLUME_NOT_FOUND');

    const again = await hyper(['file', 'delete', vol, '--yes']);
    assert.equal(again.code, 3, show(again));
    assert.match(again.stderr, /^Error \[VOLUME_NOT_FOUND\]/m);
    const againJson = await hyperJson<ErrorOut>(['file', 'delete', vol, '--yes'], 3);
    assert.equal(againJson.error.code, 'VOLUME_NOT_FOUND');
    assert.equal(againJson.error.exitCode, 3);

    const ifExists = await hyper(['file', 'delete', vol, '--if-exists']);
    assert.equal(ifExists.code, 0, show(ifExists));
    const neverWas = await hyperJson(['file', 'delete', `${vols}never/`, '--if-exists']);
    assert.equal(neverWas.deleted, false);

    const list = await hyperJson<{ volumes: { name: string }[] }>(['file', 'list', vols]);
    assert.ok(!list.volumes.some((v) => v.name === 'demo/'));
    assert.ok(!existsSync(join(dir, 'vols', 'demo', 'head')));
  });
});
