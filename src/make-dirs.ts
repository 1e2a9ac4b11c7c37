/**
 * `mkdir -p` that reports what really stopped it, one directory at a time. Node's recursive
 * mkdir is not used: it says ENOENT for a directory it cannot create on a read-only file
 * system (EROFS) or under a file (ENOTDIR), and on a file system that answers ENOENT to a
 * mkdir under an existing directory (/proc, some FUSE mounts) it retries for ever on a
 * thread of the pool, so that the command hangs and cannot even stop. A file where the
 * directory itself should be is ENOTDIR.
 */
import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

const notADirectory = (path: string): Error =>
  Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${path}'`), {
    code: 'ENOTDIR',
    syscall: 'mkdir',
    path,
  });

export async function makeDirs(dir: string, mode?: number): Promise<void> {
  const options = mode === undefined ? {} : { mode };
  const st = await stat(dir).catch(() => undefined);
  if (st?.isDirectory()) return;
  if (st !== undefined) throw notADirectory(dir);
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
  if (!(await stat(dir)).isDirectory()) throw notADirectory(dir);
}
