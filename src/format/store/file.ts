/**
 * A directory as an object store (`file:///abs/dir/`, `file://./rel/dir/`).
 *
 * Layout: key `a/b/c` is the file `<root>/a/b/c`. Everything the store needs for itself lives
 * under `<root>/.hyper/` (`tmp/` for files being written, `locks/` for per-key locks); keys
 * with a path segment starting with `.hyper` are refused, and such names never show in
 * listings.
 *
 * Atomicity across processes:
 * - every write goes to a temp file that is written and fsynced first, and only then made
 *   visible under its key;
 * - create-only (`ifNoneMatch`) makes it visible with `link()`, which fails with EEXIST if
 *   the key exists: exactly one of any number of racing creators wins;
 * - compare-and-swap (`ifMatch`), unconditional writes and deletes take a per-key lock file
 *   (O_CREAT|O_EXCL), compare the current tag, then `rename()` over the key (atomic
 *   replacement: readers see the old or the new file, never a mix). A lock whose holder died
 *   on this host, or that is older than LOCK_STALE_MS, is broken (see `breakStaleLock`).
 * - after a key's file appears or disappears, its directory is fsynced (durability).
 *
 * ETags: `<size>-<inode>-<mtime ns>` in hex, read from one fstat. Every write creates a new
 * file (a new inode), its mtime carries random microseconds, and under the key's lock a new
 * version's mtime is made later than the one it replaces, so a tag never repeats for a key
 * even when the filesystem reuses inode numbers. Unlike a content hash it costs no read of
 * the data, so ranged reads of large segments and listings stay cheap.
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { constants as fsc, type BigIntStats, type Dirent, type Stats } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { HyperError } from '../../errors.js';
import { bodyParts, notFound, objectExists, preconditionFailed } from './common.js';
import { Preader } from './pread.js';
import type {
  GetOptions,
  GetResult,
  ListOptions,
  ListPage,
  ObjectMeta,
  ObjectStore,
  PutBody,
  PutOptions,
} from './types.js';

/** Name of the store's private directory under the root. */
const PRIVATE = '.hyper';
/** A lock older than this is considered abandoned (holders keep it for milliseconds). */
export const LOCK_STALE_MS = 30_000;
/** Give up waiting for a key's lock after this long. */
const LOCK_WAIT_MS = 30_000;

const HOST = hostname();

interface Errno {
  code?: string;
}
const errCode = (e: unknown): string | undefined => (e as Errno | null)?.code;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Compare keys as S3 does: by their UTF-8 bytes. */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function tagOf(st: BigIntStats): string {
  return `${st.size.toString(16)}-${st.ino.toString(16)}-${st.mtimeNs.toString(16)}`;
}

export interface FileStoreOptions {
  /** Objects per list page (default 1000). */
  pageSize?: number;
  /** The read policy to share (sub-stores share their parent's). */
  preader?: Preader;
}

/**
 * Keys every check accepts: /-separated names of letters, digits, `_`, `-` and `.`, none
 * starting with `.` (so none is empty, `.`, `..` or private).
 */
const PLAIN_KEY = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:\/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$/;
/** A store's root prefix that keeps a plain key plain ('' or plain names each ending in /). */
const PLAIN_ROOT = /^(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*\/)*$/;

/** Write-once objects kept open per store (file descriptors). */
const KEPT_HANDLES = 64;

export class FileStore implements ObjectStore {
  readonly url: string;
  /** Objects per list page; small values exercise pagination in tests. */
  pageSize: number;
  /** The directory the URL names (holds `.hyper/`). */
  private readonly base: string;
  /** Key prefix of this (sub) store under `base`: '' or ends with '/'. */
  private readonly root: string;
  /** `root` is '' or plain names (checkKey's quick test then holds for the whole key). */
  private readonly rootPlain: boolean;
  private privateReady = false;
  /**
   * Write-once objects kept open between ranged reads (`immutable` gets), least recently
   * used first: one pread per read instead of open, fstat, read and close.
   */
  private readonly handles = new Map<string, Promise<KeptFile>>();
  /** How kept objects are read: small reads in the event loop while the page cache serves them. */
  readonly preader: Preader;

  constructor(dir: string, options: FileStoreOptions & { root?: string; url?: string } = {}) {
    this.base = dir;
    this.root = options.root ?? '';
    this.rootPlain = PLAIN_ROOT.test(this.root);
    this.url = options.url ?? `file://${dir.endsWith('/') ? dir : `${dir}/`}${this.root}`;
    this.pageSize = options.pageSize ?? 1000;
    this.preader = options.preader ?? new Preader();
  }

  // ---- helpers ------------------------------------------------------------------------

  private checkKey(key: string): string {
    // Names the format uses (seg/…, head, …) pass the quick test; anything else the full one.
    if (this.rootPlain && PLAIN_KEY.test(key)) return this.root + key;
    const full = this.root + key;
    const parts = full.split('/');
    if (
      key === '' ||
      full.startsWith('/') ||
      parts.some((p) => p === '' || p === '.' || p === '..' || p.startsWith(PRIVATE)) ||
      full.includes('\0')
    ) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `Invalid object key "${key}" for ${this.url}`,
        {
          key,
          suggestion: `Keys are /-separated names without empty, "." or ".." segments or segments starting with "${PRIVATE}".`,
        },
      );
    }
    return full;
  }

  private pathOf(full: string): string {
    return join(this.base, full);
  }

  private bucketMissing(cause?: unknown): HyperError {
    return new HyperError(
      'not-found',
      'BUCKET_NOT_FOUND',
      `Store directory ${this.base} does not exist`,
      {
        cause,
        suggestion: `Create it first (mkdir -p ${this.base}) or check the URL.`,
      },
    );
  }

  private async baseExists(): Promise<boolean> {
    try {
      return (await fsp.stat(this.base)).isDirectory();
    } catch {
      return false;
    }
  }

  /** Translate an fs error for `key` into a HyperError. */
  private async translate(e: unknown, key?: string): Promise<HyperError> {
    if (e instanceof HyperError) return e;
    const code = errCode(e);
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      if (!(await this.baseExists())) return this.bucketMissing(e);
      if (key !== undefined) return notFound(this.url, key);
    }
    if (code === 'EROFS') {
      return new HyperError(
        'unavailable',
        'ACCESS_DENIED',
        `The file store ${this.base} is on a read-only file system`,
        {
          cause: e,
          ...(key === undefined ? {} : { key }),
          suggestion:
            'Remount it read-write, or only read the volume there (`hyper serve --read-only`, `hyper file export`, `hyper file stat`).',
        },
      );
    }
    if (code === 'EACCES' || code === 'EPERM') {
      return new HyperError(
        'unavailable',
        'ACCESS_DENIED',
        `Permission denied in ${this.base}: ${String((e as Error).message)}`,
        {
          cause: e,
          ...(key === undefined ? {} : { key }),
          suggestion: 'Check the ownership and permissions of the store directory.',
        },
      );
    }
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      return new HyperError(
        'unavailable',
        'NO_SPACE',
        `No space left in the file store ${this.base}${code === 'EDQUOT' ? ' (disk quota)' : ''}`,
        {
          cause: e,
          ...(key === undefined ? {} : { key }),
          suggestion:
            'Free space on the file system holding it or grow it: `hyper file delete` of a volume you can spare works even when it is full, `hyper compact` needs a few KiB free to start. A running serve stores what it holds at its next flush.',
        },
      );
    }
    const message = e instanceof Error ? e.message : String(e);
    return new HyperError(
      'unavailable',
      'STORE_UNAVAILABLE',
      `File store ${this.base} failed: ${message}`,
      {
        cause: e,
        ...(key === undefined ? {} : { key }),
      },
    );
  }

  private async ensurePrivate(): Promise<void> {
    if (this.privateReady) return;
    for (const d of [PRIVATE, `${PRIVATE}/tmp`, `${PRIVATE}/locks`]) {
      try {
        await fsp.mkdir(join(this.base, d));
      } catch (e) {
        if (errCode(e) === 'ENOENT') throw this.bucketMissing(e);
        if (errCode(e) !== 'EEXIST') throw e;
      }
    }
    this.privateReady = true;
    await this.sweepTemp();
    await this.sweepLockLeftovers();
  }

  /**
   * Remove what killed lock takers leave in locks/: drafts (`<lock>.<nonce>`, written before
   * linking) and locks renamed aside while being broken (`<lock>.stale-<random>`). Only
   * those older than LOCK_STALE_MS: a younger one may belong to a taker at work. (A lock
   * itself has no dot in its name and is judged by breakStaleLock.)
   */
  private sweepLockLeftovers(): Promise<void> {
    return this.sweep('locks', (name, age) => name.includes('.') && age > LOCK_STALE_MS);
  }

  /**
   * Remove temp files left by writers that crashed: those of a process of this host that is
   * gone (and older than a minute), and any older than a day.
   */
  private sweepTemp(): Promise<void> {
    return this.sweep('tmp', (name, age) => {
      const pid = Number(name.split('-')[0]);
      let dead = false;
      if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid) {
        try {
          process.kill(pid, 0);
        } catch (e) {
          dead = errCode(e) === 'ESRCH';
        }
      }
      return (dead && age > 60_000) || age > 86_400_000;
    });
  }

  /** Remove the files of a private subdirectory for which `drop(name, age in ms)` says so. */
  private async sweep(sub: string, drop: (name: string, ageMs: number) => boolean): Promise<void> {
    const dir = join(this.base, PRIVATE, sub);
    let names: string[];
    try {
      names = await fsp.readdir(dir);
    } catch {
      return;
    }
    const now = Date.now();
    for (const name of names) {
      try {
        if (drop(name, now - (await fsp.stat(join(dir, name))).mtimeMs))
          await fsp.rm(join(dir, name), { force: true });
      } catch {
        // gone meanwhile
      }
    }
  }

  private async fsyncDir(dir: string): Promise<void> {
    const h = await fsp.open(dir, fsc.O_RDONLY);
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  }

  /** Create the parent directories of `full` under the base (never the base itself). */
  private async makeParents(full: string): Promise<void> {
    const parts = full.split('/').slice(0, -1);
    let dir = this.base;
    for (const p of parts) {
      const next = join(dir, p);
      try {
        await fsp.mkdir(next);
        await this.fsyncDir(dir);
      } catch (e) {
        if (errCode(e) === 'ENOENT') throw this.bucketMissing(e);
        if (errCode(e) !== 'EEXIST') throw e;
      }
      dir = next;
    }
  }

  /** Write `body` to a new fsynced temp file; returns its path and tag. */
  private async writeTemp(body: PutBody): Promise<{ tmp: string; etag: string; mtimeNs: bigint }> {
    await this.ensurePrivate();
    const tmp = join(this.base, PRIVATE, 'tmp', `${process.pid}-${randomBytes(8).toString('hex')}`);
    let h: fsp.FileHandle;
    try {
      h = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
    } catch (e) {
      if (errCode(e) !== 'ENOENT') throw e;
      // The private directory was removed under us (or the root is gone): recreate it once.
      this.privateReady = false;
      await this.ensurePrivate();
      h = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
    }
    try {
      // Pieces go in one gather write (writev) each round; a short write resumes where it
      // stopped.
      let rest = bodyParts(body).filter((p) => p.length > 0);
      let off = 0;
      while (rest.length > 0) {
        const { bytesWritten } = await h.writev(rest, off);
        off += bytesWritten;
        let n = bytesWritten;
        let k = 0;
        while (k < rest.length && n >= (rest[k] as Buffer).length)
          n -= (rest[k++] as Buffer).length;
        rest = rest.slice(k);
        if (n > 0) rest[0] = (rest[0] as Buffer).subarray(n);
      }
      // Kernel timestamps advance in clock ticks: add random microseconds so that two files
      // written in one tick (possibly on a reused inode) still get different tags.
      const t = Date.now() / 1000 + randomInt(0, 1000) / 1e6;
      await h.utimes(t, t);
      await h.sync();
      const st = await h.stat({ bigint: true });
      return { tmp, etag: tagOf(st), mtimeNs: st.mtimeNs };
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    } finally {
      await h.close();
    }
  }

  /** Retry `op` once after creating parent dirs when it fails with ENOENT. */
  private async withParents<T>(full: string, op: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await op();
      } catch (e) {
        if (errCode(e) !== 'ENOENT' || i >= 5) throw e;
        await this.makeParents(full);
      }
    }
  }

  /** Make the temp file's mtime later than `prevNs`; returns its (new) tag. */
  private async mtimeAfter(
    path: string,
    etag: string,
    mtimeNs: bigint,
    prevNs: bigint,
  ): Promise<string> {
    let ns = mtimeNs;
    for (let i = 1; ns <= prevNs && i <= 8; i++) {
      const t = Number(prevNs + 2000n * BigInt(i)) / 1e9;
      await fsp.utimes(path, t, t);
      const st = await fsp.stat(path, { bigint: true });
      ns = st.mtimeNs;
      etag = tagOf(st);
    }
    return etag;
  }

  // ---- locks ----------------------------------------------------------------------------

  private lockPath(full: string): string {
    return join(
      this.base,
      PRIVATE,
      'locks',
      createHash('sha256').update(full).digest('hex').slice(0, 40),
    );
  }

  private async withLock<T>(
    full: string,
    signal: AbortSignal | undefined,
    fn: () => Promise<T>,
  ): Promise<T> {
    await this.ensurePrivate();
    const path = this.lockPath(full);
    const nonce = randomBytes(12).toString('hex');
    const content = JSON.stringify({
      host: HOST,
      pid: process.pid,
      nonce,
      key: full,
      time: Date.now(),
    });
    const deadline = Date.now() + LOCK_WAIT_MS;
    let wait = 1;
    // The lock appears with its owner already in it (written to a temp file, then linked into
    // place), so a process killed while taking it never leaves an ownerless lock behind.
    const draft = `${path}.${nonce}`;
    // On a full file system the owner cannot be written, yet deletions (which free space) take
    // locks too: the lock is then an empty file (an inode, no data), known as this one's by
    // its inode, and judged stale by its age alone.
    let owner = content;
    try {
      await fsp.writeFile(draft, content);
    } catch (e) {
      await fsp.unlink(draft).catch(() => undefined);
      if (errCode(e) !== 'ENOSPC' && errCode(e) !== 'EDQUOT') throw e;
      owner = '';
      await fsp.writeFile(draft, owner);
    }
    const ino = (await fsp.stat(draft, { bigint: true })).ino;
    for (let attempt = 0; ; attempt++) {
      if (signal?.aborted) {
        await fsp.unlink(draft).catch(() => undefined);
        signal.throwIfAborted();
      }
      // A lock's age is its file's mtime, and the link below shares the draft's inode: after
      // waiting, refresh it so the lock is born now and not stale on arrival.
      if (attempt > 0) {
        const now = new Date();
        await fsp.utimes(draft, now, now);
      }
      try {
        await fsp.link(draft, path);
        break;
      } catch (e) {
        if (errCode(e) !== 'EEXIST') {
          await fsp.unlink(draft).catch(() => undefined);
          throw e;
        }
      }
      if (await this.breakStaleLock(path)) continue;
      if (Date.now() > deadline) {
        await fsp.unlink(draft).catch(() => undefined);
        throw new HyperError(
          'unavailable',
          'STORE_UNAVAILABLE',
          `Timed out waiting for the lock of ${this.url}${full}`,
          {
            suggestion: `If no hyper process is running, remove ${path}.`,
          },
        );
      }
      await sleep(Math.random() * wait);
      wait = Math.min(wait * 2, 50);
    }
    await fsp.unlink(draft).catch(() => undefined);
    try {
      return await fn();
    } finally {
      // Release only our own lock (a lock broken as stale may have been retaken meanwhile).
      try {
        const cur = await fsp.readFile(path, 'utf8');
        if (cur === owner && (await fsp.stat(path, { bigint: true })).ino === ino)
          await fsp.unlink(path);
      } catch {
        // already gone
      }
    }
  }

  /**
   * Break an abandoned lock: its holder was a process on this host that no longer exists, or
   * it is older than LOCK_STALE_MS. The lock is renamed aside first and checked to be the one
   * judged stale; if a live lock was moved by a concurrent breaker, it is put back.
   */
  private async breakStaleLock(path: string): Promise<boolean> {
    let text: string;
    let st: Stats;
    try {
      st = await fsp.stat(path);
      text = await fsp.readFile(path, 'utf8');
    } catch {
      return true; // released meanwhile: try again at once
    }
    let stale = Date.now() - st.mtimeMs > LOCK_STALE_MS;
    if (!stale) {
      try {
        const info = JSON.parse(text) as { host?: string; pid?: number };
        if (info.host === HOST && typeof info.pid === 'number' && info.pid !== process.pid) {
          try {
            process.kill(info.pid, 0);
          } catch (e) {
            stale = errCode(e) === 'ESRCH';
          }
        }
      } catch {
        // being written: not stale unless old
      }
    }
    if (!stale) return false;
    const aside = `${path}.stale-${randomBytes(6).toString('hex')}`;
    try {
      await fsp.rename(path, aside);
    } catch {
      return true;
    }
    const moved = await fsp.readFile(aside, 'utf8').catch(() => undefined);
    const movedIno = await fsp.stat(aside).then(
      (s) => s.ino,
      () => undefined,
    );
    // (Empty locks, taken on a full file system, differ only by their inode.)
    if (moved !== text || movedIno !== st.ino) {
      await fsp.link(aside, path).catch(() => undefined);
    }
    await fsp.rm(aside, { force: true });
    return true;
  }

  // ---- ObjectStore ----------------------------------------------------------------------

  /** An open handle on a write-once object, kept for later reads (see `handles`). */
  private openKept(full: string): Promise<KeptFile> {
    let p = this.handles.get(full);
    if (p) {
      // Most recently used last.
      this.handles.delete(full);
      this.handles.set(full, p);
      return p;
    }
    p = (async () => {
      const h = await fsp.open(this.pathOf(full), fsc.O_RDONLY);
      try {
        const st = await h.stat({ bigint: true });
        if (!st.isFile()) throw Object.assign(new Error('not a file'), { code: 'ENOENT' });
        return new KeptFile(h, Number(st.size), tagOf(st), this.preader);
      } catch (e) {
        await h.close();
        throw e;
      }
    })();
    this.handles.set(full, p);
    p.catch(() => {
      if (this.handles.get(full) === p) this.handles.delete(full);
    });
    while (this.handles.size > KEPT_HANDLES) {
      const [oldest, op] = this.handles.entries().next().value as [string, Promise<KeptFile>];
      this.handles.delete(oldest);
      // Reads in flight on it finish first.
      void op.then((o) => o.close()).catch(() => undefined);
    }
    return p;
  }

  private forget(full: string): void {
    const p = this.handles.get(full);
    if (!p) return;
    this.handles.delete(full);
    void p.then((o) => o.close()).catch(() => undefined);
  }

  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    const full = this.checkKey(key);
    options.signal?.throwIfAborted();
    if (options.immutable) {
      let kept: KeptFile;
      for (;;) {
        try {
          kept = await this.openKept(full);
        } catch (e) {
          throw await this.translate(e, key);
        }
        // Closed meanwhile (pushed out by other objects' handles): open it again.
        if (kept.acquire()) break;
      }
      const { size } = kept;
      const start = Math.min(options.range?.offset ?? 0, size);
      const end = options.range
        ? Math.min(options.range.offset + options.range.length, size)
        : size;
      const want = Math.max(0, end - start);
      const into = options.into;
      const body =
        into !== undefined && into.length >= want
          ? into.subarray(0, want)
          : Buffer.allocUnsafe(want);
      try {
        let off = 0;
        while (off < body.length) {
          const bytesRead = await kept.read(body, off, body.length - off, start + off);
          if (bytesRead === 0) break;
          off += bytesRead;
        }
        return {
          body: off === body.length ? body : body.subarray(0, off),
          etag: kept.etag,
          size,
        };
      } catch (e) {
        this.forget(full);
        throw await this.translate(e, key);
      } finally {
        kept.release();
      }
    }
    let h: fsp.FileHandle;
    try {
      h = await fsp.open(this.pathOf(full), fsc.O_RDONLY);
    } catch (e) {
      throw await this.translate(e, key);
    }
    try {
      const st = await h.stat({ bigint: true });
      if (!st.isFile()) throw notFound(this.url, key);
      const size = Number(st.size);
      const start = Math.min(options.range?.offset ?? 0, size);
      const end = options.range
        ? Math.min(options.range.offset + options.range.length, size)
        : size;
      const body = Buffer.allocUnsafe(Math.max(0, end - start));
      let off = 0;
      while (off < body.length) {
        const { bytesRead } = await h.read(body, off, body.length - off, start + off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      return { body: off === body.length ? body : body.subarray(0, off), etag: tagOf(st), size };
    } catch (e) {
      throw await this.translate(e, key);
    } finally {
      await h.close();
    }
  }

  async head(key: string, options: { signal?: AbortSignal } = {}): Promise<ObjectMeta | undefined> {
    const full = this.checkKey(key);
    options.signal?.throwIfAborted();
    try {
      const st = await fsp.stat(this.pathOf(full), { bigint: true });
      if (!st.isFile()) return undefined;
      return {
        key,
        size: Number(st.size),
        etag: tagOf(st),
        lastModified: new Date(Number(st.mtimeMs)),
      };
    } catch (e) {
      const he = await this.translate(e, key);
      if (he.code === 'OBJECT_NOT_FOUND') return undefined;
      throw he;
    }
  }

  async put(key: string, body: PutBody, options: PutOptions = {}): Promise<{ etag: string }> {
    const full = this.checkKey(key);
    options.signal?.throwIfAborted();
    const target = this.pathOf(full);
    let tmp: string | undefined;
    try {
      const w = await this.writeTemp(body);
      tmp = w.tmp;
      const tmpPath = w.tmp;
      let etag = w.etag;
      if (options.ifNoneMatch) {
        try {
          await this.withParents(full, () => fsp.link(tmpPath, target));
        } catch (e) {
          if (errCode(e) === 'EEXIST') throw objectExists(this.url, key);
          throw e;
        }
        await this.fsyncDir(dirname(target));
        return { etag: w.etag };
      }
      await this.withLock(full, options.signal, async () => {
        let cur: BigIntStats | undefined;
        try {
          cur = await fsp.stat(target, { bigint: true });
        } catch (e) {
          if (errCode(e) !== 'ENOENT' && errCode(e) !== 'ENOTDIR') throw e;
        }
        if (options.ifMatch !== undefined && (!cur || tagOf(cur) !== options.ifMatch)) {
          throw preconditionFailed(this.url, key);
        }
        // Versions of a key get strictly increasing mtimes, so a tag never comes back (ABA).
        if (cur) etag = await this.mtimeAfter(tmpPath, etag, w.mtimeNs, cur.mtimeNs);
        await this.withParents(full, () => fsp.rename(tmpPath, target));
        tmp = undefined;
        await this.fsyncDir(dirname(target));
      });
      return { etag };
    } catch (e) {
      const c = errCode(e);
      if (c === 'ENOTDIR' || c === 'EISDIR') {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Key "${key}" clashes with another key in ${this.url}: a directory store cannot hold both "x" and "x/..."`,
          { key, cause: e },
        );
      }
      throw await this.translate(e, key);
    } finally {
      if (tmp !== undefined) await fsp.rm(tmp, { force: true }).catch(() => undefined);
    }
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ListPage> {
    const fullPrefix = this.root + prefix;
    const startAfter =
      options.startAfter === undefined ? undefined : this.root + options.startAfter;
    const delimiter = options.delimiter || undefined;
    // Walk from the deepest directory that holds every key with this prefix.
    const slash = fullPrefix.lastIndexOf('/');
    const dirKey = fullPrefix.slice(0, slash + 1); // '' or ends with '/'
    const namePrefix = fullPrefix.slice(slash + 1);
    let skipPrefix: string | undefined;

    let objects: ObjectMeta[] = [];
    let prefixes: string[] = [];
    const strip = (k: string): string => k.slice(this.root.length);

    const self = this; // eslint-disable-line @typescript-eslint/no-this-alias
    async function* walk(
      dk: string,
      first: boolean,
    ): AsyncGenerator<{ key: string; st: BigIntStats }> {
      let entries: Dirent[];
      try {
        entries = await fsp.readdir(join(self.base, dk), { withFileTypes: true });
      } catch (e) {
        const c = errCode(e);
        if (c === 'ENOENT' || c === 'ENOTDIR') {
          if (dk === '' || !(await self.baseExists())) throw self.bucketMissing(e);
          return;
        }
        throw e;
      }
      const items = entries
        .filter((d) => !d.name.startsWith(PRIVATE) && (!first || d.name.startsWith(namePrefix)))
        .map((d) => ({ d, sortKey: dk + d.name + (d.isDirectory() ? '/' : '') }))
        .sort((a, b) => compareKeys(a.sortKey, b.sortKey));
      for (const { d, sortKey } of items) {
        options.signal?.throwIfAborted();
        if (d.isDirectory()) {
          // Skip subtrees wholly at or before startAfter, and rolled-up prefixes.
          if (
            startAfter !== undefined &&
            compareKeys(sortKey, startAfter) <= 0 &&
            !startAfter.startsWith(sortKey)
          ) {
            continue;
          }
          if (skipPrefix !== undefined && sortKey.startsWith(skipPrefix)) continue;
          yield* walk(sortKey, false);
        } else if (d.isFile()) {
          if (startAfter !== undefined && compareKeys(sortKey, startAfter) <= 0) continue;
          if (skipPrefix !== undefined && sortKey.startsWith(skipPrefix)) continue;
          let st: BigIntStats;
          try {
            st = await fsp.stat(join(self.base, sortKey), { bigint: true });
          } catch {
            continue; // deleted while listing
          }
          yield { key: sortKey, st };
        }
      }
    }

    try {
      for await (const { key, st } of walk(dirKey, true)) {
        if (delimiter) {
          const rest = key.slice(fullPrefix.length);
          const i = rest.indexOf(delimiter);
          if (i >= 0) {
            const cp = fullPrefix + rest.slice(0, i + delimiter.length);
            if (
              startAfter === undefined ||
              compareKeys(cp, startAfter) > 0 ||
              !startAfter.startsWith(cp)
            ) {
              prefixes.push(strip(cp));
            }
            skipPrefix = cp;
            if (objects.length + prefixes.length >= this.pageSize) {
              yield { objects, prefixes };
              objects = [];
              prefixes = [];
            }
            continue;
          }
        }
        objects.push({
          key: strip(key),
          size: Number(st.size),
          etag: tagOf(st),
          lastModified: new Date(Number(st.mtimeMs)),
        });
        if (objects.length + prefixes.length >= this.pageSize) {
          yield { objects, prefixes };
          objects = [];
          prefixes = [];
        }
      }
    } catch (e) {
      throw await this.translate(e);
    }
    yield { objects, prefixes };
  }

  async delete(keys: readonly string[], options: { signal?: AbortSignal } = {}): Promise<void> {
    const fulls = keys.map((k) => this.checkKey(k));
    if (fulls.length === 0) return;
    if (!(await this.baseExists())) throw this.bucketMissing();
    const dirs = new Set<string>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < fulls.length) {
        const full = fulls[next++] as string;
        this.forget(full);
        await this.withLock(full, options.signal, async () => {
          try {
            await fsp.unlink(this.pathOf(full));
            dirs.add(dirname(full));
          } catch (e) {
            const c = errCode(e);
            if (c !== 'ENOENT' && c !== 'ENOTDIR') throw e;
          }
        });
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(16, fulls.length) }, worker));
      for (const d of dirs) {
        await this.fsyncDir(d === '.' ? this.base : join(this.base, d)).catch(() => undefined);
        // Remove directories left empty, so they do not show as prefixes (ENOTEMPTY is fine).
        let cur = d;
        while (cur !== '.' && cur !== '' && cur !== '/') {
          try {
            await fsp.rmdir(join(this.base, cur));
          } catch {
            break;
          }
          cur = dirname(cur);
        }
      }
    } catch (e) {
      throw await this.translate(e);
    }
  }

  sub(prefix: string): ObjectStore {
    if (!prefix.endsWith('/') || prefix.startsWith('/')) {
      throw new HyperError(
        'internal',
        'INTERNAL',
        `sub prefix must end with / and be relative: ${prefix}`,
      );
    }
    return new FileStore(this.base, {
      root: this.root + prefix,
      url: this.url + prefix,
      pageSize: this.pageSize,
      preader: this.preader,
    });
  }

  async close(): Promise<void> {
    const kept = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(kept.map((p) => p.then((o) => o.close()).catch(() => undefined)));
  }
}

/**
 * An open write-once object kept for ranged reads. Reads go through the store's Preader on
 * its descriptor (in the loop or `fs.read`): the promise API's FileHandle.read costs about
 * three times the main-thread time per call (measured: 100,000 reads of 4 KiB, 0.9 s against
 * 0.3 s), which a random read of a local volume pays on every block. So the handle counts its
 * reads itself and closes only once none is in flight (a descriptor closed under a read could
 * be reused by another file).
 */
class KeptFile {
  private busy = 0;
  private closing: Promise<void> | undefined;
  private closed!: () => void;
  private finished = false;

  constructor(
    private readonly h: fsp.FileHandle,
    readonly size: number,
    readonly etag: string,
    private readonly preader: Preader,
  ) {}

  /** Hold the descriptor open for reads; false once it is closing (open the object again). */
  acquire(): boolean {
    if (this.closing) return false;
    this.busy++;
    return true;
  }

  release(): void {
    if (--this.busy === 0 && this.closing) this.finish();
  }

  /** One pread (between acquire and release). */
  read(into: Buffer, at: number, length: number, position: number): Promise<number> {
    return this.preader.read(this.h.fd, into, at, length, position);
  }

  /** Close once the reads in flight are done. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.closed = resolve;
    });
    if (this.busy === 0) this.finish();
    return this.closing;
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    void this.h
      .close()
      .catch(() => undefined)
      .then(() => this.closed());
  }
}
