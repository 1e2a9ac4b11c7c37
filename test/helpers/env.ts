/**
 * What the integration tests need from the machine, and one rule for when it is missing:
 * with HYPER_REQUIRE_TOOLS=1 (set by scripts/test.sh, so always in CI) a missing tool, S3
 * endpoint or other prerequisite (root, /dev/fuse) is a test failure; otherwise the test is
 * skipped with the reason. (A missing build, dist/, always fails: see helpers/cli.ts.)
 */
import { spawnSync } from 'node:child_process';
import type { TestContext } from 'node:test';

export const requireTools = process.env.HYPER_REQUIRE_TOOLS === '1';

export function haveTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/**
 * The rule itself: returns true when `ok`; otherwise throws `reason` when prerequisites are
 * required, and returns false after marking the test skipped when they are not.
 * Use: `if (!needPrerequisite(t, process.getuid?.() === 0, 'needs root')) return;`
 */
export function needPrerequisite(t: TestContext, ok: boolean, reason: string): boolean {
  if (ok) return true;
  if (requireTools) throw new Error(`${reason} (HYPER_REQUIRE_TOOLS=1)`);
  t.skip(reason);
  return false;
}

/**
 * Returns false (after marking the test skipped) when a tool is missing and tools are not
 * required; throws when they are required. Use: `if (!needTools(t, 'nbdinfo')) return;`
 */
export function needTools(t: TestContext, ...names: string[]): boolean {
  const missing = names.filter((n) => !haveTool(n));
  return needPrerequisite(
    t,
    missing.length === 0,
    `missing tools: ${missing.join(', ')} (run the README test command to install them)`,
  );
}

export interface S3TestConfig {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
}

/** The S3-compatible server started by scripts/test.sh (Ceph RGW on loopback). */
export function s3Config(): S3TestConfig | undefined {
  const endpoint = process.env.HYPER_TEST_S3_ENDPOINT;
  const bucket = process.env.HYPER_TEST_S3_BUCKET;
  const accessKeyId = process.env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = process.env.AWS_SECRET_ACCESS_KEY;
  if (!endpoint || !bucket || !accessKeyId || !secretAccessKey) return undefined;
  return {
    endpoint,
    bucket,
    accessKeyId,
    secretAccessKey,
    region: process.env.AWS_REGION ?? 'us-east-1',
  };
}

export function needS3(t: TestContext): S3TestConfig | undefined {
  const cfg = s3Config();
  if (cfg) return cfg;
  needPrerequisite(
    t,
    false,
    'no S3 endpoint (HYPER_TEST_S3_ENDPOINT etc.; scripts/test.sh starts Ceph RGW)',
  );
  return undefined;
}
