/**
 * S3 helpers for integration tests and benchmarks: every test works under its own prefix of
 * the test bucket (so runs and parallel test files never see each other's keys), and cleans
 * it up afterwards.
 */
import { randomBytes } from 'node:crypto';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { openStore, type OpenStoreOptions } from '../../src/format/store/index.js';
import type { ObjectStore } from '../../src/format/store/types.js';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { needPrerequisite, type S3TestConfig } from './env.js';
import { run as runTool } from './nbd.js';

const run = `${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
let counter = 0;

/** A prefix no other test or run uses: `<name>-<run id>-<n>/`. */
export function uniquePrefix(name: string): string {
  return `${name.replace(/[^A-Za-z0-9._-]/g, '-')}-${run}-${counter++}/`;
}

/** `s3://bucket/<unique prefix>/`. */
export function uniqueS3Url(cfg: S3TestConfig, name: string): string {
  return `s3://${cfg.bucket}/${uniquePrefix(name)}`;
}

/** openStore options for the test endpoint (explicit credentials, so env changes do not matter). */
export function s3Options(cfg: S3TestConfig, extra: OpenStoreOptions = {}): OpenStoreOptions {
  return {
    endpoint: cfg.endpoint,
    region: cfg.region,
    credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey },
    ...extra,
  };
}

/** Open a store on a fresh unique prefix of the test bucket. */
export async function openS3TestStore(
  cfg: S3TestConfig,
  name: string,
  extra: OpenStoreOptions = {},
): Promise<ObjectStore> {
  return openStore(uniqueS3Url(cfg, name), s3Options(cfg, extra));
}

/** Delete every key under the store's root. */
export async function emptyStore(store: ObjectStore): Promise<void> {
  const keys: string[] = [];
  for await (const page of store.list('')) keys.push(...page.objects.map((o) => o.key));
  if (keys.length > 0) await store.delete(keys);
}

/** Create a bucket on the test endpoint (no error if it exists). */
export async function ensureBucket(cfg: S3TestConfig, bucket = cfg.bucket): Promise<void> {
  const client = new S3Client({
    endpoint: cfg.endpoint,
    region: cfg.region,
    forcePathStyle: true,
    credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (e) {
    const name = (e as { name?: string }).name;
    if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw e;
  } finally {
    client.destroy();
  }
}

/**
 * radosgw-admin against the RGW that scripts/rgw/start.sh started (HYPER_RGW_DIR), failing the
 * test on a non-zero exit; undefined (test skipped, or failed in CI) without one.
 */
export function radosgwAdmin(t: TestContext): ((...args: string[]) => Promise<void>) | undefined {
  const dir = process.env.HYPER_RGW_DIR;
  if (
    !needPrerequisite(t, dir !== undefined, 'needs HYPER_RGW_DIR (the RGW of scripts/rgw/start.sh)')
  )
    return undefined;
  return async (...args) => {
    const r = await runTool('radosgw-admin', ['-c', join(dir!, 'ceph.conf'), ...args], {
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, `radosgw-admin ${args.join(' ')}: ${r.stderr}`);
  };
}
