/**
 * Unix socket paths, for every listener that binds one (the NBD server, the control sockets):
 * the kernel's length limit, what a path already there is, and the claim that keeps two
 * listeners from replacing the same stale file at once.
 */
import { createHash } from 'node:crypto';
import { lstat, realpath } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { basename, dirname, join, resolve } from 'node:path';

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

/** A claim on a socket path (claimSocketPath), held while its listener runs. */
export interface SocketPathClaim {
  release(): void;
}

/**
 * Claim `path` for one listener on this host: binding an abstract unix socket named after it
 * (Linux), which the kernel gives one process at a time and takes back when that process ends,
 * however it ends. A listener holds the claim while it binds the path and for as long as it
 * listens there, so two processes that find the same stale socket file cannot both replace
 * it (the second would unlink the first's fresh socket and leave it listening where nobody
 * finds it). Undefined when another listener (of this process or another) holds the claim:
 * it is serving there, or about to. Elsewhere than Linux, or in another network namespace
 * (abstract sockets belong to one), nothing is claimed and the check on the file alone
 * remains.
 */
export async function claimSocketPath(path: string): Promise<SocketPathClaim | undefined> {
  if (process.platform !== 'linux') return { release: () => undefined };
  let where = resolve(path);
  try {
    where = join(await realpath(dirname(where)), basename(where));
  } catch {
    // The directory is not there yet: the path as given (binding it fails anyway).
  }
  const name = `\0hyper-socket-claim/${createHash('sha256').update(where).digest('hex').slice(0, 40)}`;
  const server = createServer();
  const got = await new Promise<'claimed' | 'held' | 'unsupported'>((done) => {
    // (Another failure to bind it, say a sandbox without abstract sockets: no claim.)
    server.once('error', (e: NodeJS.ErrnoException) =>
      done(e.code === 'EADDRINUSE' ? 'held' : 'unsupported'),
    );
    server.listen(name, () => done('claimed'));
  });
  if (got === 'held') return undefined;
  if (got === 'unsupported') return { release: () => undefined };
  server.unref();
  return { release: () => void server.close() };
}
