// The store conformance suite and error translation against a real S3 server (Ceph RGW,
// started by scripts/test.sh), each test under its own prefix.
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { describe, it } from 'node:test';
import { createHash } from 'node:crypto';
import { isHyperError } from '../../../src/errors.js';
import { openStore } from '../../../src/format/store/index.js';
import { signsPayload } from '../../../src/format/store/s3.js';
import { FaultProxy } from '../../helpers/fault-proxy.js';
import { needS3, s3Config } from '../../helpers/env.js';
import {
  emptyStore,
  ensureBucket,
  openS3TestStore,
  s3Options,
  uniqueS3Url,
} from '../../helpers/s3.js';
import { collect, rejectsWith, storeConformance } from '../../helpers/store-conformance.js';

const cfg = s3Config();

if (!cfg) {
  it('S3 store on Ceph RGW', (t) => {
    needS3(t);
  });
} else {
  storeConformance({
    name: 's3:// (Ceph RGW)',
    pageSize: 7,
    md5Etags: true,
    timeout: 120_000,
    make: async () => {
      await ensureBucket(cfg);
      return openS3TestStore(cfg, 'conformance', { pageSize: 7 });
    },
    dispose: async (s) => {
      await emptyStore(s);
      await s.close();
    },
  });

  describe('s3:// error translation', () => {
    it('a missing bucket is BUCKET_NOT_FOUND', async () => {
      const s = await openStore('s3://hyper-no-such-bucket/x/', s3Options(cfg));
      await rejectsWith(s.get('k'), 'BUCKET_NOT_FOUND');
      await rejectsWith(s.put('k', Buffer.from('v')), 'BUCKET_NOT_FOUND');
      await rejectsWith(s.put('k', Buffer.from('v'), { ifNoneMatch: true }), 'BUCKET_NOT_FOUND');
      await rejectsWith(collect(s, ''), 'BUCKET_NOT_FOUND');
      await s.close();
    });

    it('bad credentials are ACCESS_DENIED with a suggestion about credentials', async () => {
      const s = await openStore(uniqueS3Url(cfg, 'badcreds'), {
        ...s3Options(cfg),
        credentials: { accessKeyId: 'not-a-key', secretAccessKey: 'not-a-secret' },
      });
      for (const op of [
        () => s.get('k'),
        () => s.put('k', Buffer.from('v')),
        () => collect(s, ''),
      ]) {
        try {
          await op();
          assert.fail('succeeded with bad credentials');
        } catch (e) {
          assert.ok(isHyperError(e, 'ACCESS_DENIED'), String(e));
          assert.match(e.suggestion ?? '', /AWS_ACCESS_KEY_ID/);
        }
      }
      // A wrong secret for a real key: SignatureDoesNotMatch.
      const s2 = await openStore(uniqueS3Url(cfg, 'badsecret'), {
        ...s3Options(cfg),
        credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: 'wrong-secret' },
      });
      await rejectsWith(s2.get('k'), 'ACCESS_DENIED');
      await s.close();
      await s2.close();
    });

    it('an unreachable endpoint is STORE_UNAVAILABLE naming it (after bounded retries)', async () => {
      const port = await new Promise<number>((resolve) => {
        const srv = createServer();
        srv.listen(0, '127.0.0.1', () => {
          const p = (srv.address() as { port: number }).port;
          srv.close(() => resolve(p));
        });
      });
      const endpoint = `http://127.0.0.1:${port}`;
      let retries = 0;
      const s = await openStore(`s3://${cfg.bucket}/x/`, {
        ...s3Options(cfg),
        endpoint,
        maxAttempts: 3,
        retry: { baseDelayMs: 1, onRetry: () => retries++ },
      });
      try {
        await s.get('k');
        assert.fail('reached a closed port');
      } catch (e) {
        assert.ok(isHyperError(e, 'STORE_UNAVAILABLE'), String(e));
        assert.ok(e.message.includes(endpoint), e.message);
      }
      assert.equal(retries, 2);
      await s.close();
    });

    it('an unknown host is STORE_UNAVAILABLE', async () => {
      const s = await openStore(`s3://${cfg.bucket}/x/`, {
        ...s3Options(cfg),
        endpoint: 'http://no-such-host.invalid:7480',
        maxAttempts: 1,
      });
      await rejectsWith(s.head('k'), 'STORE_UNAVAILABLE');
      await s.close();
    });
  });

  describe('s3:// payload signing', () => {
    it('PUT bodies are signed over http by default and unsigned with off; RGW takes both, conditional or not', async () => {
      await ensureBucket(cfg);
      const proxy = new FaultProxy(new URL(cfg.endpoint));
      const endpoint = await proxy.start();
      const seen: string[] = [];
      proxy.onRequest = (req) => {
        if (req.method === 'PUT') seen.push(String(req.headers['x-amz-content-sha256']));
      };
      try {
        const url = uniqueS3Url(cfg, 'payload-signing');
        const body = Buffer.alloc(256 * 1024);
        for (let i = 0; i < body.length; i += 4) body.writeUInt32LE((i * 2654435761) >>> 0, i);
        const sha = createHash('sha256').update(body).digest('hex');
        for (const mode of ['auto', 'off', 'on'] as const) {
          seen.length = 0;
          const s = await openStore(url, { ...s3Options(cfg), endpoint, payloadSigning: mode });
          const { etag } = await s.put(`${mode}/k`, body, { ifNoneMatch: true });
          await s.put(`${mode}/k`, body, { ifMatch: etag });
          await rejectsWith(s.put(`${mode}/k`, body, { ifNoneMatch: true }), 'OBJECT_EXISTS');
          await s.put(`${mode}/plain`, body);
          // A body in pieces is streamed; a signed one carries the hash of all its pieces.
          const pieces = [0, 1, 4096, 70_000, 200_000, body.length].map((end, k, a) =>
            body.subarray(k === 0 ? 0 : (a[k - 1] as number), end),
          );
          await s.put(`${mode}/pieces`, pieces, { ifNoneMatch: true });
          for (const key of ['k', 'plain', 'pieces'])
            assert.ok((await s.get(`${mode}/${key}`)).body.equals(body), `${mode}/${key}`);
          assert.ok(seen.length >= 5, `${mode}: ${seen.length} PUTs seen`);
          const want = mode === 'off' ? 'UNSIGNED-PAYLOAD' : sha;
          assert.deepEqual(new Set(seen), new Set([want]), mode);
          await s.close();
        }
        // The aws CLI's habit over TLS, and the variable that sets it when no option does.
        assert.equal(signsPayload({}, 'https://s3.eu-west-1.amazonaws.com'), false);
        assert.equal(signsPayload({}, 'http://127.0.0.1:7480'), true);
        assert.equal(signsPayload({ payloadSigning: 'on' }, 'https://x'), true);
        process.env.HYPER_S3_PAYLOAD_SIGNING = 'off';
        try {
          assert.equal(signsPayload({}, 'http://127.0.0.1:7480'), false);
          process.env.HYPER_S3_PAYLOAD_SIGNING = 'sometimes';
          assert.throws(
            () => signsPayload({}, 'http://127.0.0.1:7480'),
            (e) =>
              isHyperError(e, 'INVALID_ARGUMENT') && /HYPER_S3_PAYLOAD_SIGNING/.test(e.message),
          );
        } finally {
          delete process.env.HYPER_S3_PAYLOAD_SIGNING;
        }
      } finally {
        await proxy.stop();
      }
    });
  });
}
