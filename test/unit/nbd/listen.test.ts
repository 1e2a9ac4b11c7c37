/**
 * NbdServer.listen on a unix socket path: a socket file left by a server that was killed
 * (kill -9 leaves it, and nothing accepts on it) is replaced, so a restart needs no manual
 * cleanup; a live server's socket and any other file at the path are left alone; a path
 * longer than the kernel keeps is refused; a path another server is binding (it holds the
 * path's claim) is refused, so two servers never both replace the same stale file.
 */
import assert from 'node:assert/strict';
import { lstat, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { NbdServer } from '../../../src/nbd/server.js';
import { claimSocketPath } from '../../../src/nbd/socket-path.js';
import { MemoryDevice } from '../../../src/nbd/testing/memory-device.js';
import { leaveStaleSocket } from '../../helpers/stale-socket.js';

const exports = () => {
  const device = new MemoryDevice({ size: 1024 * 1024 });
  return [{ name: '', open: () => device }];
};

/** The first bytes a server sends on `path`. */
const greeting = (path: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const c = connect(path);
    c.once('data', (d: Buffer) => {
      c.destroy();
      resolve(d.subarray(0, 8).toString('latin1'));
    });
    c.once('error', reject);
  });

describe('NbdServer.listen on a unix socket path', () => {
  it('replaces a socket a killed server left, never a live one or another file', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-nbd-listen-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, 'nbd.sock');
    await leaveStaleSocket(path);
    assert.ok((await lstat(path)).isSocket(), 'the killed server left its socket');

    const server = new NbdServer({ exports: exports() });
    t.after(() => server.close(0));
    assert.deepEqual(await server.listen({ path }), { path });
    assert.equal(await greeting(path), 'NBDMAGIC');

    // A live server's socket is not taken over, and it keeps serving.
    const second = new NbdServer({ exports: exports() });
    await assert.rejects(second.listen({ path }), { code: 'EADDRINUSE' });
    assert.equal(await greeting(path), 'NBDMAGIC');

    // Nor is a file that is not a socket removed.
    const file = join(dir, 'file.sock');
    await writeFile(file, 'keep me');
    const third = new NbdServer({ exports: exports() });
    await assert.rejects(third.listen({ path: file }), { code: 'EADDRINUSE' });
    assert.equal(await readFile(file, 'utf8'), 'keep me');

    // A path longer than the kernel keeps is refused, not bound cut short elsewhere.
    const long = join(dir, 'x'.repeat(120));
    const fourth = new NbdServer({ exports: exports() });
    await assert.rejects(fourth.listen({ path: long }), { code: 'ENAMETOOLONG' });
    assert.deepEqual(
      (await readdir(dir)).sort(),
      ['file.sock', 'nbd.sock'],
      'no socket was bound under a shortened name',
    );
  });

  it('a path another server is claiming is refused, and its stale file left to that server', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-nbd-listen-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, 'nbd.sock');
    await leaveStaleSocket(path);
    // Another server found the same stale file and is replacing it (it holds the claim).
    const other = await claimSocketPath(path);
    assert.ok(other !== undefined);
    const server = new NbdServer({ exports: exports() });
    await assert.rejects(server.listen({ path }), { code: 'EADDRINUSE' });
    assert.ok((await lstat(path)).isSocket(), 'the file the other server replaces is left to it');
    // The same path by another spelling is the same claim.
    await assert.rejects(
      new NbdServer({ exports: exports() }).listen({ path: join(dir, '.', 'nbd.sock') }),
      { code: 'EADDRINUSE' },
    );
    other.release();
    const after = new NbdServer({ exports: exports() });
    t.after(() => after.close(0));
    assert.deepEqual(await after.listen({ path }), { path });
    assert.equal(await greeting(path), 'NBDMAGIC');
    // Held while it serves: a claim now is refused.
    assert.equal(await claimSocketPath(path), undefined);
    await after.close(0);
    const again = await claimSocketPath(path);
    assert.ok(again !== undefined, 'released on close');
    again.release();
  });

  it('two servers replacing the same stale socket at once: one serves, the other is refused', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-nbd-listen-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, 'nbd.sock');
    for (let round = 0; round < 3; round++) {
      await leaveStaleSocket(path);
      const servers = [0, 1].map(() => new NbdServer({ exports: exports() }));
      const outcomes = await Promise.allSettled(servers.map((s) => s.listen({ path })));
      const won = outcomes.flatMap((o, i) => (o.status === 'fulfilled' ? [i] : []));
      assert.equal(won.length, 1, `round ${round}: ${JSON.stringify(outcomes)}`);
      const lost = outcomes.find((o) => o.status === 'rejected') as PromiseRejectedResult;
      assert.equal((lost.reason as NodeJS.ErrnoException).code, 'EADDRINUSE');
      assert.equal(await greeting(path), 'NBDMAGIC');
      // The loser's failed start removed nothing; the winner's close removes its file.
      await servers[1 - won[0]!]!.close(0);
      assert.equal(await greeting(path), 'NBDMAGIC');
      await servers[won[0]!]!.close(0);
      await assert.rejects(lstat(path), { code: 'ENOENT' });
    }
  });
});
