/**
 * Unix socket paths, for every listener that binds one (the NBD server, the control sockets):
 * the kernel's length limit, and what a path already there is.
 */
import { lstat } from 'node:fs/promises';
import { connect } from 'node:net';

/** Bytes of a unix socket's path the kernel keeps (sun_path: 108, with its terminating NUL). */
export const MAX_SOCKET_PATH = 107;

/**
 * An ENAMETOOLONG error for a unix socket path longer than the kernel keeps, else undefined.
 * (Node would bind the path cut short, somewhere nobody looks for it.)
 */
export function socketPathTooLong(path: string): Error | undefined {
  const n = Buffer.byteLength(path);
  if (n <= MAX_SOCKET_PATH) return undefined;
  return Object.assign(
    new Error(`The unix socket path is ${n} bytes; the kernel keeps at most ${MAX_SOCKET_PATH}`),
    { code: 'ENAMETOOLONG', path },
  );
}

/**
 * What is at `path`: nothing, a file that is not a socket, a socket something accepts on
 * (live), or one that refuses connections (stale: left by a listener that was killed). A
 * connect that fails otherwise (a full backlog, no permission) is not taken for stale.
 */
export async function socketAt(path: string): Promise<'none' | 'not-socket' | 'live' | 'stale'> {
  const st = await lstat(path).catch(() => undefined);
  if (st === undefined) return 'none';
  if (!st.isSocket()) return 'not-socket';
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve('live');
    });
    s.once('error', (e: NodeJS.ErrnoException) =>
      resolve(e.code === 'ECONNREFUSED' ? 'stale' : e.code === 'ENOENT' ? 'none' : 'live'),
    );
  });
}
