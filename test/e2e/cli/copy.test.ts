/**
 * `hyper file copy` and `hyper file compare` through the real CLI: file:// to file:// (a checkpoint by snapshot name,
 * a refresh of an existing copy, a missing or leased target, SIGINT part way and a rerun that
 * finishes the copy), and file:// to S3 and back on
 * the RGW of the run while `serve` writes to the source. Contents are compared as sha256 of
 * `file export`; the JSON output against its schema.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorJsonSchema, fileCompareSchema, fileCopySchema } from '../../../src/cli/vocabulary.js';
import { openStore } from '../../../src/format/store/index.js';
import { createSnapshot } from '../../../src/format/volume/history.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, hyper, show, tempDir } from '../../helpers/cli.js';
import { needS3 } from '../../helpers/env.js';
import { nbdsh } from '../../helpers/nbd.js';
import { serve, stopServe } from '../../helpers/serve.js';
import { exportSha } from '../../helpers/volume-content.js';

const MiB = 1024 * 1024;

/** An 8 MiB volume: data, snapshot "first", more data and a zeroed range. */
async function makeSource(url: string): Promise<void> {
  const store = await openStore(url);
  try {
    await Volume.create(store, { size: 8 * MiB });
    const v = await Volume.open(store);
    const head = randomBytes(2 * MiB);
    head[0] = 0xff; // (zeroed later: the snapshot and the volume then differ at offset 0)
    await v.write(0, head);
    await v.write(5 * MiB + 512, randomBytes(100_000));
    await v.flush();
    await createSnapshot(store, 'first');
    await v.write(MiB, randomBytes(3 * MiB));
    await v.writeZeroes(0, MiB / 2);
    await v.close();
  } finally {
    await store.close();
  }
}

async function copy(args: string[], code = 0): Promise<unknown> {
  const r = await hyper(['file', 'copy', ...args, '--json']);
  assert.equal(r.code, code, show(r));
  return JSON.parse(r.stdout) as unknown;
}

async function compare(args: string[], code: number): Promise<unknown> {
  const r = await hyper(['file', 'compare', ...args, '--json']);
  assert.equal(r.code, code, show(r));
  return JSON.parse(r.stdout) as unknown;
}

describe('hyper file copy', () => {
  it('copies a volume or a snapshot into a new or an existing volume; refuses bad targets', async (t) => {
    const dir = await tempDir(t, 'hyper-copy-e2e-');
    await mkdir(join(dir, 'src'));
    const src = fileUrl(join(dir, 'src'));
    await makeSource(src);
    const img = join(dir, 'check.img');
    const want = await exportSha(src, img);
    const wantFirst = await exportSha(src, img, ['--at', 'first']);

    const dst = fileUrl(join(dir, 'dst'));
    const out = fileCopySchema.parse(await copy([src, dst, '--create']));
    assert.deepEqual([out.created, out.size, out.at], [true, 8 * MiB, null]);
    assert.ok(out.dataBytes > 0 && out.dataBytes + out.zeroBytes === 8 * MiB);
    assert.equal(await exportSha(dst, img), want);

    const same = fileCompareSchema.parse(await compare([src, dst], 0));
    assert.deepEqual([same.identical, same.firstDifference], [true, null]);

    // The snapshot's checkpoint over the copy: the ranges it does not map become zeros again.
    const again = fileCopySchema.parse(await copy([src, dst, '--at', 'first']));
    assert.equal(again.created, false);
    assert.deepEqual(again.at, { snapshot: 'first' });
    assert.ok(again.checkpoint > out.checkpoint);
    assert.equal(await exportSha(dst, img), wantFirst);
    // Now it differs from the source (first at 0, which the source zeroed since) but not from
    // the snapshot, nor from an export of it; text output and exit 9 without --json.
    const differ = fileCompareSchema.parse(await compare([src, dst], 9));
    assert.deepEqual([differ.identical, differ.firstDifference], [false, 0]);
    const text = await hyper(['file', 'compare', src, dst]);
    assert.equal(text.code, 9, show(text));
    assert.match(text.stdout, /^Contents differ at offset 0 \(sector 0\)/m);
    assert.equal(
      fileCompareSchema.parse(await compare([src, dst, '--at', 'first'], 0)).identical,
      true,
    );
    assert.equal(
      fileCompareSchema.parse(await compare([dst, src, '--second-at', 'first'], 0)).identical,
      true,
    );
    await exportSha(dst, img);
    assert.equal(
      fileCompareSchema.parse(await compare([src, img, '--at', 'first'], 0)).secondSize,
      8 * MiB,
    );
    const notVolume = errorJsonSchema.parse(await compare([src, img, '--second-at', '1'], 2));
    assert.equal(notVolume.error.code, 'INVALID_ARGUMENT');

    const zstd = fileUrl(join(dir, 'zstd'));
    await copy([src, zstd, '--create', '--compression', 'zstd', '--no-dedup']);
    const st = await hyper(['file', 'stat', zstd, '--json']);
    assert.equal((JSON.parse(st.stdout) as { compression: string }).compression, 'zstd');
    assert.equal(await exportSha(zstd, img), want);

    // With its snapshot: the same name holds the same content in the copy.
    const deep = fileUrl(join(dir, 'deep'));
    const d = fileCopySchema.parse(await copy([src, deep, '--create', '--snapshots']));
    assert.deepEqual(
      d.snapshots.map((x) => x.name),
      ['first'],
    );
    assert.equal(
      fileCompareSchema.parse(
        await compare([deep, src, '--at', 'first', '--second-at', 'first'], 0),
      ).identical,
      true,
    );
    assert.equal(await exportSha(deep, img), want);
    // Again without --create: a copy of the snapshots that has nothing left to do.
    const done = fileCopySchema.parse(await copy([src, deep, '--snapshots']));
    assert.equal(done.created, false);
    assert.deepEqual(done.snapshots, []);
    // Into a volume that is no interrupted copy of them: refused.
    const notOne = errorJsonSchema.parse(await copy([src, dst, '--snapshots'], 2));
    assert.equal(notOne.error.code, 'INVALID_ARGUMENT');
    assert.match(notOne.error.message, /holds no snapshot/);

    // No target without --create; a target that exists with it; a smaller one; itself.
    const missing = errorJsonSchema.parse(await copy([src, fileUrl(join(dir, 'none'))], 3));
    assert.equal(missing.error.code, 'VOLUME_NOT_FOUND');
    assert.match(missing.error.suggestion ?? '', /--create/);
    const exists = errorJsonSchema.parse(await copy([src, dst, '--create'], 4));
    assert.equal(exists.error.code, 'VOLUME_EXISTS');
    const small = fileUrl(join(dir, 'small'));
    assert.equal((await hyper(['file', 'create', small, '--size', '1M'])).code, 0);
    const tooSmall = errorJsonSchema.parse(await copy([src, small], 2));
    assert.equal(tooSmall.error.code, 'OUT_OF_RANGE');
    assert.match(tooSmall.error.suggestion ?? '', /set-len/);
    const badEndpoint = errorJsonSchema.parse(
      await copy([src, fileUrl(join(dir, 'x')), '--target-endpoint', 'nope'], 2),
    );
    assert.match(badEndpoint.error.message, /--target-endpoint/);
    const self = errorJsonSchema.parse(await copy([src, src], 2));
    assert.equal(self.error.code, 'INVALID_ARGUMENT');
    assert.equal(await exportSha(dst, img), wantFirst, 'refusals wrote nothing');

    // A target another writer holds: LEASE_HELD, and --force takes it over.
    const store = await openStore(dst);
    const writer = await Volume.open(store, { holder: 'test-writer', leaseTtlMs: 120_000 });
    try {
      const held = errorJsonSchema.parse(await copy([src, dst], 4));
      assert.equal(held.error.code, 'LEASE_HELD');
      assert.match(held.error.message, /test-writer/);
      await copy([src, dst, '--force']);
      assert.equal(await exportSha(dst, img), want);
    } finally {
      await writer.close().catch(() => undefined);
      await store.close();
    }
  });

  it('stops on SIGINT with what it copied committed; the same copy again finishes it', async (t) => {
    const dir = await tempDir(t, 'hyper-copy-int-');
    await mkdir(join(dir, 'src'));
    const src = fileUrl(join(dir, 'src'));
    const store = await openStore(src);
    try {
      await Volume.create(store, { size: 256 * MiB });
      const v = await Volume.open(store);
      const base = randomBytes(MiB);
      for (let off = 0; off < 256 * MiB; off += MiB) {
        const chunk = Buffer.from(base);
        for (let b = 0; b < MiB; b += 4096) chunk.writeUInt32LE((off + b) / 4096, b);
        await v.write(off, chunk);
      }
      await v.close();
    } finally {
      await store.close();
    }
    const dstDir = join(dir, 'dst');
    const r = await hyper(['file', 'copy', src, fileUrl(dstDir), '--create'], {
      timeoutMs: 120_000,
      // Once the copy is under way (a data segment beyond the initial one exists).
      onSpawn: (child) => {
        void (async () => {
          for (let i = 0; i < 3000 && child.exitCode === null; i++) {
            if ((await readdir(join(dstDir, 'seg')).catch(() => [])).length >= 2) break;
            await sleep(10);
          }
          child.kill('SIGINT');
        })();
      },
    });
    assert.equal(r.code, 130, `the copy must be cut short by SIGINT: ${show(r)}`);
    assert.match(
      r.stderr,
      /^Error \[ABORTED\]: Copy interrupted .* committed in .* as checkpoint \d+/m,
    );
    assert.match(r.stderr, /without --create/);
    const img = join(dir, 'check.img');
    const want = await exportSha(src, img);
    assert.notEqual(await exportSha(fileUrl(dstDir), img), want, 'part of the copy');
    const done = fileCopySchema.parse(await copy([src, fileUrl(dstDir)]));
    assert.equal(done.created, false);
    assert.equal(await exportSha(fileUrl(dstDir), img), want);
  });

  it('copies to S3 and back while serve writes to the source', async (t) => {
    const s3 = needS3(t);
    if (!s3) return;
    const dir = await tempDir(t, 'hyper-copy-s3-');
    const endpoint = ['--endpoint', s3.endpoint];
    const src = `s3://${s3.bucket}/copy-${randomUUID()}/src/`;
    assert.equal((await hyper(['file', 'create', src, '--size', '16M', ...endpoint])).code, 0);
    const served = await serve([src, ...endpoint]);
    try {
      const w = await nbdsh(
        `h.connect_uri(${JSON.stringify(served.uri)}); h.pwrite(b'\\x5a' * (3 * 1024 * 1024), 1024 * 1024); h.pwrite(b'\\x07' * 4096, 12 * 1024 * 1024); h.flush()`,
      );
      assert.equal(w.code, 0, w.stderr);
      // The copy reads the checkpoint it opens, whatever the writer does after.
      const local = fileUrl(join(dir, 'local'));
      const [out] = await Promise.all([
        hyper(['file', 'copy', src, local, '--create', '--json', ...endpoint]),
        nbdsh(
          `h.connect_uri(${JSON.stringify(served.uri)}); [h.pwrite(b'\\x11' * 65536, i * 65536) for i in range(64)]; h.flush()`,
        ),
      ]);
      assert.equal(out.code, 0, show(out));
      const r = fileCopySchema.parse(JSON.parse(out.stdout));
      const img = join(dir, 'check.img');
      const at = ['--at', String(r.sourceCheckpoint)];
      assert.equal(await exportSha(local, img), await exportSha(src, img, [...at, ...endpoint]));

      const back = `s3://${s3.bucket}/copy-${randomUUID()}/back/`;
      const b = fileCopySchema.parse(await copy([local, back, '--create', ...endpoint]));
      assert.equal(b.dataBytes, r.dataBytes);
      assert.equal(await exportSha(back, img, endpoint), await exportSha(local, img));
      const cmp = await hyper([
        'file',
        'compare',
        back,
        src,
        '--second-at',
        String(r.sourceCheckpoint),
        ...endpoint,
      ]);
      assert.equal(cmp.code, 0, show(cmp));

      // The target (and compare's second volume) on an endpoint of its own: no --endpoint
      // here (the tests' environment has none), only --target-endpoint / --second-endpoint.
      const own = `s3://${s3.bucket}/copy-${randomUUID()}/own/`;
      const o = await hyper([
        'file',
        'copy',
        local,
        own,
        '--create',
        '--target-endpoint',
        s3.endpoint,
        '--json',
      ]);
      assert.equal(o.code, 0, show(o));
      const sameOwn = await hyper([
        'file',
        'compare',
        local,
        own,
        '--second-endpoint',
        s3.endpoint,
      ]);
      assert.equal(sameOwn.code, 0, show(sameOwn));
      // ...and the target's flags are what reach it: a closed port there fails the copy (exit 5).
      const nowhere = await hyper([
        ...['file', 'copy', src, `s3://${s3.bucket}/copy-${randomUUID()}/x/`, '--create'],
        ...[...endpoint, '--target-endpoint', 'http://127.0.0.1:9', '--json'],
      ]);
      assert.equal(nowhere.code, 5, show(nowhere));
      assert.equal(
        errorJsonSchema.parse(JSON.parse(nowhere.stdout)).error.code,
        'STORE_UNAVAILABLE',
      );
    } finally {
      await stopServe(served);
    }
  });
});
