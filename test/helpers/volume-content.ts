/**
 * What a volume holds, for the history e2e tests (test/e2e/history/): seeded random data,
 * sha256 of exports made by the real CLI or of checkpoints read through the library, and the
 * objects and temp files a file:// volume has on disk.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, readdir, rm, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import type { ObjectStore } from '../../src/format/store/types.js';
import { Volume } from '../../src/format/volume/volume.js';
import { hyper, show, type CliOptions } from './cli.js';
export { rng } from './rng.js';

/** Pseudo-random bytes from a generator (fast enough for a few MiB). */
export function randomBuffer(rand: () => number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i + 4 <= length; i += 4) b.writeUInt32LE(Math.floor(rand() * 0x1_0000_0000), i);
  return b;
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** `hyper file export` of the volume (or one of its checkpoints) to a file; returns its sha256. */
export async function exportSha(
  url: string,
  image: string,
  extra: string[] = [],
  options: CliOptions = {},
): Promise<string> {
  await rm(image, { force: true });
  const r = await hyper(['file', 'export', url, image, ...extra], options);
  assert.equal(r.code, 0, `export ${extra.join(' ')}: ${show(r)}`);
  return sha256(await readFile(image));
}

/** sha256 of a checkpoint's content read through the library. */
export async function shaAt(
  store: ObjectStore,
  at?: { checkpoint: number } | { snapshot: string },
): Promise<string> {
  const v = await Volume.open(store, { readOnly: true, ...(at ? { at } : {}) });
  try {
    return sha256(await v.read(0, v.info.size));
  } finally {
    await v.close();
  }
}

/** Volume objects of a file:// volume on disk: key → size (the store's private .hyper/ excluded). */
export async function objectsOnDisk(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        if (d === dir && e.name === '.hyper') continue;
        await walk(p);
      } else if (e.isFile()) out.set(relative(dir, p), (await stat(p)).size);
    }
  };
  await walk(dir);
  return out;
}

export const sum = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);

/** Files a writer is still writing or left behind in the file store's temp directory. */
export async function tempFiles(dir: string): Promise<string[]> {
  return readdir(join(dir, '.hyper', 'tmp')).catch(() => []);
}
