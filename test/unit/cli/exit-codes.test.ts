import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { exitCodeFor } from '../../../src/base-command.js';
import { HyperError, type ErrorKind } from '../../../src/errors.js';

describe('exitCodeFor', () => {
  it('maps each kind to its documented exit code', () => {
    const table: [ErrorKind, number][] = [
      ['internal', 1],
      ['invalid', 2],
      ['not-found', 3],
      ['conflict', 4],
      ['unavailable', 5],
      ['data', 6],
    ];
    for (const [kind, code] of table) {
      assert.equal(exitCodeFor(new HyperError(kind, 'INTERNAL', 'x')), code, kind);
    }
  });

  it('gives 130 for an interrupted operation', () => {
    assert.equal(exitCodeFor(new HyperError('unavailable', 'ABORTED', 'x')), 130);
  });

  it('an abort that says why keeps its reason (what a daemon stopping answers a waiting map)', async () => {
    const { toHyperError } = await import('../../../src/errors.js');
    const { setTimeout: sleep } = await import('node:timers/promises');
    const why = new HyperError('unavailable', 'DAEMON_NOT_RUNNING', 'The daemon is stopping');
    const ac = new AbortController();
    const slept = sleep(60_000, undefined, { signal: ac.signal });
    ac.abort(why);
    const got = await slept.then(
      () => undefined,
      (e: unknown) => toHyperError(e),
    );
    assert.equal(got, why);
    assert.equal(exitCodeFor(got), 5);
    // Without a reason of its own it is an interruption (130).
    const plain = new AbortController();
    const p2 = sleep(60_000, undefined, { signal: plain.signal });
    plain.abort();
    const got2 = await p2.then(
      () => undefined,
      (e: unknown) => toHyperError(e),
    );
    assert.equal(got2?.code, 'ABORTED');
    assert.equal(exitCodeFor(got2 as HyperError), 130);
  });
});

describe('ordinary system errors', () => {
  it('are usage or unavailable errors with a suggestion, never "a bug"', async () => {
    const { toHyperError } = await import('../../../src/errors.js');
    const { createServer } = await import('node:net');
    const { writeFile } = await import('node:fs/promises');
    // A real EADDRINUSE from two listeners on one port.
    const a = createServer();
    await new Promise<void>((r) => a.listen(0, '127.0.0.1', r));
    const port = (a.address() as { port: number }).port;
    const b = createServer();
    const inUse = await new Promise<Error>((r) => {
      b.once('error', r);
      b.listen(port, '127.0.0.1');
    });
    a.close();
    const e1 = toHyperError(inUse);
    assert.equal(e1.code, 'ADDRESS_IN_USE');
    assert.equal(exitCodeFor(e1), 2);
    assert.match(e1.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
    assert.match(e1.suggestion ?? '', /--port 0/);
    // A real ENOENT.
    const missing = await writeFile('/nonexistent-dir-for-hyper/x', 'x').catch((e: Error) => e);
    const e2 = toHyperError(missing);
    assert.equal(e2.code, 'PATH_NOT_FOUND');
    assert.equal(exitCodeFor(e2), 2);
    assert.match(e2.message, /nonexistent-dir-for-hyper/);
    // ENOSPC is the store or disk being unavailable.
    const full = Object.assign(new Error('no space'), { code: 'ENOSPC', path: '/mnt/full/x' });
    assert.equal(exitCodeFor(toHyperError(full)), 5);
    // A port below 1024 without root: about ports, not directories.
    const low = toHyperError(
      Object.assign(new Error('listen EACCES'), {
        code: 'EACCES',
        syscall: 'listen',
        address: '0.0.0.0',
        port: 80,
      }),
    );
    assert.equal(low.code, 'PERMISSION_DENIED');
    assert.equal(exitCodeFor(low), 2);
    assert.match(low.message, /0\.0\.0\.0:80/);
    assert.match(low.suggestion ?? '', /below 1024 need root/);
    // Anything else is still reported as a bug.
    assert.equal(toHyperError(new Error('boom')).code, 'INTERNAL');
  });
});

describe('makeDirs', () => {
  it('makes missing directories, and names what stopped it rather than "no such file"', async (t) => {
    const { makeDirs } = await import('../../../src/make-dirs.js');
    const { toHyperError } = await import('../../../src/errors.js');
    const { mkdtemp, rm, stat, writeFile } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = await mkdtemp(join(tmpdir(), 'hyper-make-dirs-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await makeDirs(join(dir, 'a', 'b', 'c'), 0o700);
    assert.ok((await stat(join(dir, 'a', 'b', 'c'))).isDirectory());
    assert.equal((await stat(join(dir, 'a'))).mode & 0o777, 0o700);
    await makeDirs(join(dir, 'a', 'b', 'c')); // already there
    // A file in the way: Node's own recursive mkdir says ENOENT; this says ENOTDIR.
    await writeFile(join(dir, 'f'), 'x');
    const e = await makeDirs(join(dir, 'f', 'sub', 'deeper')).catch((x: unknown) => x);
    assert.equal((e as NodeJS.ErrnoException).code, 'ENOTDIR');
    const h = toHyperError(e);
    assert.equal(h.code, 'PATH_NOT_FOUND');
    assert.match(h.message, /is a file, not a directory/);
    // The directory itself a file: EEXIST from mkdir, ENOTDIR here (not "unexpected").
    const same = await makeDirs(join(dir, 'f')).catch((x: unknown) => x);
    assert.equal((same as NodeJS.ErrnoException).code, 'ENOTDIR');
    assert.equal(toHyperError(same).code, 'PATH_NOT_FOUND');
    // EROFS reads as what it is.
    const ro = toHyperError(Object.assign(new Error('ro'), { code: 'EROFS', path: '/mnt/ro/x' }));
    assert.equal(ro.code, 'PERMISSION_DENIED');
    assert.match(ro.message, /Read-only file system \(\/mnt\/ro\/x\)/);
    assert.equal(exitCodeFor(ro), 2);
  });

  it(
    'gives up on a file system that answers ENOENT under an existing directory (/proc)',
    { timeout: 10_000 },
    async () => {
      // Node's recursive mkdir retries this for ever on a pool thread (`serve --cache-dir
      // /proc/x` hung, and could not stop).
      const { makeDirs } = await import('../../../src/make-dirs.js');
      const { toHyperError } = await import('../../../src/errors.js');
      const e = await makeDirs('/proc/hyper-no-such-dir/sub').catch((x: unknown) => x);
      assert.ok(e instanceof Error, 'refused');
      assert.equal(toHyperError(e).code, 'PATH_NOT_FOUND');
    },
  );

  it('ordinary system errors get a code and a suggestion, never "a bug in hyper"', async () => {
    const { toHyperError } = await import('../../../src/errors.js');
    const sys = (code: string) =>
      toHyperError(Object.assign(new Error(code), { code, path: '/srv/x' }));
    const cases: [string, string, number, RegExp][] = [
      ['EIO', 'IO_ERROR', 5, /I\/O error \(\/srv\/x\)/],
      ['EMFILE', 'TOO_MANY_OPEN_FILES', 5, /Too many open files/],
      ['ENFILE', 'TOO_MANY_OPEN_FILES', 5, /Too many open files/],
      ['EISDIR', 'INVALID_ARGUMENT', 2, /Is a directory/],
      ['EEXIST', 'INVALID_ARGUMENT', 2, /Already exists/],
      ['ENAMETOOLONG', 'INVALID_ARGUMENT', 2, /File name too long/],
      ['ELOOP', 'PATH_NOT_FOUND', 2, /symbolic links/],
      ['EBUSY', 'DEVICE_BUSY', 4, /in use \(\/srv\/x\): mounted/],
      ['ENOTFOUND', 'ADDRESS_NOT_AVAILABLE', 2, /does not resolve/],
    ];
    for (const [errno, code, exit, re] of cases) {
      const h = sys(errno);
      assert.equal(h.code, code, errno);
      assert.equal(exitCodeFor(h), exit, errno);
      assert.match(h.message, re);
      assert.ok(h.suggestion && !/bug/.test(h.suggestion), errno);
    }
  });
});
