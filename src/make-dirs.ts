/**
 * `mkdir -p` that reports what really stopped it. Node's recursive mkdir says ENOENT for a
 * directory it cannot create on a read-only file system (EROFS), or under a file (ENOTDIR);
 * making the path again one directory at a time gives the real errno. A file where the
 * directory itself should be (EEXIST) is ENOTDIR too.
 */
import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

export async function makeDirs(dir: string, mode?: number): Promise<void> {
  const options = mode === undefined ? {} : { mode };
  try {
    await mkdir(dir, { ...options, recursive: true });
    return;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' && !(await stat(dir)).isDirectory())
      throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), {
        code: 'ENOTDIR',
        syscall: 'mkdir',
        path: dir,
      });
    if (code !== 'ENOENT') throw e;
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
