/**
 * The CLI against a real S3-compatible store (the Ceph RGW that scripts/test.sh starts), with
 * the endpoint given both as --endpoint and as AWS_ENDPOINT_URL, and the store failures
 * mapped to their exit codes.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { hyper, hyperJson, show, tempDir } from '../../helpers/cli.js';
import { needS3 } from '../../helpers/env.js';

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
});
