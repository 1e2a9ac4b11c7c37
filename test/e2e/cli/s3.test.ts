/**
 * The CLI against a real S3-compatible store (the Ceph RGW that scripts/test.sh starts), with
 * the endpoint given both as --endpoint and as AWS_ENDPOINT_URL, the store failures mapped
 * to their exit codes, and a clone's pin on an S3 parent released when the clone is deleted.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { FileDeleteResult } from '../../../src/commands/file/delete.js';
import type { SnapshotListResult } from '../../../src/commands/snapshot/list.js';
import type { SnapshotUnpinResult } from '../../../src/commands/snapshot/unpin.js';
import { fileUrl, hyper, hyperJson, show, tempDir } from '../../helpers/cli.js';
import { needS3 } from '../../helpers/env.js';
import { nbdsh } from '../../helpers/nbd.js';
import { serve, stopServe } from '../../helpers/serve.js';

const MiB = 1024 * 1024;

interface ErrorOut {
  error: { kind: string; code: string; exitCode: number };
}

describe('hyper file on S3', () => {
  it('creates, imports, lists, exports and deletes a volume on S3', async (t) => {
    const s3 = needS3(t);
    if (!s3) return;
    const dir = await tempDir(t);
    const prefix = `s3://${s3.bucket}/cli-${randomUUID()}/`;
    const vol = `${prefix}vm1/`;
    const endpoint = ['--endpoint', s3.endpoint];
    const viaEnv = { env: { AWS_ENDPOINT_URL: s3.endpoint } };

    const image = randomBytes(4 * MiB);
    image.fill(0, MiB, 2 * MiB);
    const imagePath = join(dir, 'disk.img');
    await writeFile(imagePath, image);

    const created = await hyperJson(['file', 'create', vol, '--size', '4M', ...endpoint]);
    assert.equal(created.url, vol);
    const imported = await hyperJson(['file', 'import', imagePath, vol], 0, viaEnv);
    assert.equal(imported.zeroBytes, MiB);

    const listed = await hyperJson<{ volumes: { name: string }[] }>([
      'file',
      'list',
      prefix,
      ...endpoint,
    ]);
    assert.deepEqual(
      listed.volumes.map((v) => v.name),
      ['vm1/'],
    );
    const st = await hyperJson(['file', 'stat', vol], 0, viaEnv);
    assert.equal(st.usedBytes, 3 * MiB);

    const outPath = join(dir, 'out.img');
    await hyperJson(['file', 'export', vol, outPath, ...endpoint]);
    assert.ok((await readFile(outPath)).equals(image));

    const deleted = await hyperJson(['file', 'delete', vol, '--yes'], 0, viaEnv);
    assert.equal(deleted.deleted, true);
    const gone = await hyperJson<ErrorOut>(['file', 'stat', vol, ...endpoint], 3);
    assert.equal(gone.error.code, 'VOLUME_NOT_FOUND');
  });

  it('maps store failures to exit codes: missing bucket 3, bad credentials and no server 5', async (t) => {
    const s3 = needS3(t);
    if (!s3) return;
    const noBucket = await hyperJson<ErrorOut>(
      ['file', 'stat', `s3://no-such-bucket-${Date.now()}/v/`, '--endpoint', s3.endpoint],
      3,
    );
    assert.equal(noBucket.error.code, 'BUCKET_NOT_FOUND');

    const badKey = await hyper(
      ['file', 'stat', `s3://${s3.bucket}/x/`, '--endpoint', s3.endpoint],
      {
        env: { AWS_SECRET_ACCESS_KEY: 'not-the-secret' },
      },
    );
    assert.equal(badKey.code, 5, show(badKey));
    assert.match(badKey.stderr, /^Error \[ACCESS_DENIED\]/m);

    const noServer = await hyper([
      'file',
      'stat',
      `s3://${s3.bucket}/x/`,
      '--endpoint',
      'http://127.0.0.1:1',
    ]);
    assert.equal(noServer.code, 5, show(noServer));
    assert.match(noServer.stderr, /^Error \[STORE_UNAVAILABLE\]/m);
    assert.doesNotMatch(noServer.stderr, /NodeVersionSupportWarning/);
  });

  it('deleting a clone releases its pin on an S3 parent, or with --force leaves it for unpin', async (t) => {
    const s3 = needS3(t);
    if (!s3) return;
    const dir = await tempDir(t);
    const parent = `s3://${s3.bucket}/cli-${randomUUID()}/base/`;
    const endpoint = ['--endpoint', s3.endpoint];
    const badKey = { env: { AWS_SECRET_ACCESS_KEY: 'not-the-secret' } };
    await writeFile(join(dir, 'a.img'), randomBytes(2 * MiB));
    const ia = await hyperJson<{ checkpoint: number }>([
      ...['file', 'import', join(dir, 'a.img'), parent, '--create'],
      ...endpoint,
    ]);
    const onS3 = `${parent.slice(0, -'base/'.length)}clone-s3/`;
    const local = fileUrl(join(dir, 'clone-local'));
    const forced = fileUrl(join(dir, 'clone-forced'));
    for (const c of [onS3, local, forced])
      await hyperJson(['snapshot', 'clone', parent, c, ...endpoint]);
    const clonesOf = async (): Promise<string[]> => {
      const l = await hyperJson<SnapshotListResult>(['snapshot', 'list', parent, ...endpoint]);
      return l.checkpoints.find((c) => c.checkpoint === ia.checkpoint)?.cloneUrls ?? [];
    };
    assert.deepEqual(await clonesOf(), [forced, local, onS3].sort());

    // The parent refuses the pin release (bad credentials): the delete stops after the clone's
    // head, keeps the pin, and a rerun with good credentials finishes it.
    const denied = await hyper(['file', 'delete', local, '--yes', ...endpoint], badKey);
    assert.equal(denied.code, 5, show(denied));
    assert.match(denied.stderr, /could not be released[\s\S]*Run the same delete again/);
    assert.deepEqual(await clonesOf(), [forced, local, onS3].sort());
    const done = await hyperJson<FileDeleteResult>(['file', 'delete', local, '--yes', ...endpoint]);
    assert.equal(done.parent?.url, parent);
    assert.match(done.parent?.pinKey ?? '', /^pin\/[0-9a-f]{32}$/);
    assert.equal(done.parent?.pinReleased, true);
    assert.deepEqual(await clonesOf(), [forced, onS3].sort());

    // --force deletes the clone and leaves the pin, saying how to release it.
    const f = await hyper(['file', 'delete', forced, '--yes', '--force', ...endpoint], badKey);
    assert.equal(f.code, 0, show(f));
    assert.match(f.stderr, /snapshot unpin/);
    assert.deepEqual(await clonesOf(), [forced, onS3].sort());
    const u = await hyperJson<SnapshotUnpinResult>([
      ...['snapshot', 'unpin', parent, forced],
      ...endpoint,
    ]);
    assert.equal(u.released.length, 1);
    assert.deepEqual(await clonesOf(), [onS3]);

    // A clone on S3 releases its pin on delete; then the parent deletes without --force.
    const d = await hyperJson<FileDeleteResult>(['file', 'delete', onS3, '--yes', ...endpoint]);
    assert.equal(d.parent?.pinReleased, true);
    assert.deepEqual(await clonesOf(), []);
    await hyperJson(['file', 'delete', parent, '--yes', ...endpoint]);
  });

  /**
   * A volume names other stores: a clone its parent, a volume served with --wal-url its log.
   * Every command that opens them must use the endpoint it was given (here only --endpoint:
   * no AWS_ENDPOINT_URL). Before, export, import, restore and compact opened them with the
   * SDK's defaults and went to AWS (STORE_UNAVAILABLE, exit 5).
   */
  it("opens a clone's parent and a volume's WAL at the endpoint it was given", async (t) => {
    const s3 = needS3(t);
    if (!s3) return;
    const dir = await tempDir(t);
    const root = `s3://${s3.bucket}/cli-${randomUUID()}`;
    const endpoint = ['--endpoint', s3.endpoint];
    const a = randomBytes(2 * MiB);
    await writeFile(join(dir, 'a.img'), a);
    await hyperJson([
      'file',
      'import',
      join(dir, 'a.img'),
      `${root}/base/`,
      '--create',
      ...endpoint,
    ]);
    const clone = `${root}/clone/`;
    await hyperJson(['snapshot', 'clone', `${root}/base/`, clone, ...endpoint]);
    const c = await hyperJson<{ checkpoint: number }>(['file', 'stat', clone, ...endpoint]);
    const exported = async (url: string): Promise<Buffer> => {
      const out = join(dir, 'out.img');
      const e = await hyper(['file', 'export', url, out, '--overwrite', ...endpoint]);
      assert.equal(e.code, 0, show(e));
      return readFile(out);
    };
    // Reads blocks from the parent's segments.
    assert.ok((await exported(clone)).subarray(0, 2 * MiB).equals(a));
    // Writes into the clone (read-modify-write reads the parent), then undoes it.
    await writeFile(join(dir, 'b.img'), Buffer.alloc(4096 + 100, 0x5b));
    const i = await hyper(['file', 'import', join(dir, 'b.img'), clone, ...endpoint]);
    assert.equal(i.code, 0, show(i));
    const r = await hyper([
      ...['snapshot', 'restore', clone, '--to', String(c.checkpoint)],
      ...endpoint,
    ]);
    assert.equal(r.code, 0, show(r));
    const k = await hyper(['compact', clone, '--keep-last', '1', '--yes', ...endpoint]);
    assert.equal(k.code, 0, show(k));
    assert.ok((await exported(clone)).subarray(0, 2 * MiB).equals(a));

    // A writer with a WAL on the same store dies after a FLUSH: the write is only in the log.
    const vol = `${root}/logged/`;
    await hyperJson(['file', 'create', vol, '--size', '8M', ...endpoint]);
    const served = await serve([vol, '--wal-url', `${root}/wal/`, ...endpoint]);
    const w = await nbdsh(
      `h.connect_uri(${JSON.stringify(served.uri)}); h.pwrite(b'\\xab' * 65536, 4 * 1024 * 1024); h.flush()`,
    );
    assert.equal(w.code, 0, w.stderr);
    assert.equal(await stopServe(served, 'SIGKILL'), 137);
    // The next writer (an import) replays the log before its own writes.
    const j = await hyper(['file', 'import', join(dir, 'b.img'), vol, '--force', ...endpoint]);
    assert.equal(j.code, 0, show(j));
    const got = await exported(vol);
    assert.ok(got.subarray(4 * MiB, 4 * MiB + 65536).equals(Buffer.alloc(65536, 0xab)));
    assert.ok(got.subarray(0, 4196).equals(Buffer.alloc(4196, 0x5b)));
  });
});
