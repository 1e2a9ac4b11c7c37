/**
 * A small file system that fills up: a tmpfs mounted for the length of a test body (root
 * only; callers check with needPrerequisite). `mount -o remount,size=…` grows it.
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { tempDir } from './cli.js';
import { run } from './nbd.js';

/** Run `body` with a tmpfs of `size` mounted in a fresh directory, unmounted afterwards. */
export async function withTmpfs(
  t: TestContext,
  size: string,
  body: (mnt: string) => Promise<void>,
): Promise<void> {
  const mnt = join(await tempDir(t, 'hyper-full-fs-'), 'fs');
  await mkdir(mnt);
  const m = await run('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  assert.equal(m.code, 0, m.stderr);
  try {
    await body(mnt);
  } finally {
    const u = await run('umount', [mnt]);
    assert.equal(u.code, 0, u.stderr);
  }
}
