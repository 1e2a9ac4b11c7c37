/**
 * `mkdir -p` that reports what really stopped it. Node's recursive mkdir says ENOENT for a
 * directory it cannot create on a read-only file system (EROFS), or under a file (ENOTDIR);
 * making the path again one directory at a time gives the real errno.
 */
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

export async function makeDirs(dir: string, mode?: number): Promise<void> {
  const options = mode === undefined ? {} : { mode };
  try {
    await mkdir(dir, { ...options, recursive: true });
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const path: string[] = [];
  for (let p = resolve(dir); ; p = dirname(p)) {
    path.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const p of path) {
    try {
      await mkdir(p, options);
    } catch (e) {
      // (A file where a directory should be is EEXIST here, and ENOTDIR one level down.)
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
}
