import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FileStore } from '../../../../src/format/store/file.js';
import { openStore } from '../../../../src/format/store/index.js';
import { collect, rejectsWith, storeConformance } from '../../../helpers/store-conformance.js';

const base = mkdtempSync(join(tmpdir(), 'hyper-file-store-'));
after(() => rmSync(base, { recursive: true, force: true }));
let n = 0;

storeConformance({
  name: 'file://',
  pageSize: 7,
  make: () => {
    const dir = join(base, `t${n++}`);
    return openStore(`file://${dir}/`, { pageSize: 7 }).then(async (s) => {
      const { mkdir } = await import('node:fs/promises');
      await mkdir(dir);
      return s;
    });
  },
});

describe('file:// specifics', () => {
  it('a missing root directory is BUCKET_NOT_FOUND with a suggestion', async () => {
    const s = new FileStore(join(base, 'does-not-exist'));
    for (const op of [
      () => s.get('k'),
      () => s.put('k', Buffer.from('x')),
      () => s.put('k', Buffer.from('x'), { ifNoneMatch: true }),
      () => s.put('k', Buffer.from('x'), { ifMatch: 'abc' }),
      () => collect(s, ''),
      () => s.delete(['k']),
    ]) {
      await rejectsWith(op(), 'BUCKET_NOT_FOUND');
    }
    await rejectsWith(s.head('k'), 'BUCKET_NOT_FOUND');
    try {
      await s.get('k');
    } catch (e) {
      assert.match(String((e as { suggestion?: string }).suggestion), /mkdir/);
    }
  });

  it('temp and lock files never show in listings, and keys cannot reach them', async () => {
    const dir = join(base, 'private');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir);
    const s = new FileStore(dir);
    await s.put('a', Buffer.from('1'));
    await s.put('b', Buffer.from('1'), { ifNoneMatch: true });
    const { etag } = await s.put('c', Buffer.from('1'));
    await s.put('c', Buffer.from('2'), { ifMatch: etag });
    assert.ok(readdirSync(dir).includes('.hyper'));
    // A leftover temp file from a crashed writer stays invisible.
    writeFileSync(join(dir, '.hyper', 'tmp', 'crashed'), 'junk');
    assert.deepEqual((await collect(s, '')).keys, ['a', 'b', 'c']);
    assert.deepEqual((await collect(s, '', { delimiter: '/' })).prefixes, []);
    await rejectsWith(s.put('.hyper/tmp/x', Buffer.from('x')), 'INVALID_ARGUMENT');
    await rejectsWith(s.get('../escape'), 'INVALID_ARGUMENT');
    await rejectsWith(s.get('a//b'), 'INVALID_ARGUMENT');
    for (const bad of ['a/../b', 'a/./b', 'a/.hyper/x', '/a', 'a/', 'a\0b', '']) {
      await rejectsWith(s.get(bad), 'INVALID_ARGUMENT');
      await rejectsWith(s.sub('p/').get(bad), 'INVALID_ARGUMENT');
    }
    // Names with dots inside, dashes and underscores are ordinary keys.
    await s.put('seg/0000000000000001', Buffer.from('s'));
    await s.put('v-1_a/x.y..z', Buffer.from('d'));
    assert.equal((await s.get('v-1_a/x.y..z')).body.toString(), 'd');
    assert.equal((await s.sub('v-1_a/').get('x.y..z')).body.toString(), 'd');
    assert.equal((await s.get('seg/0000000000000001', { immutable: true })).body.toString(), 's');
    assert.deepEqual(readdirSync(join(dir, '.hyper', 'locks')), [], 'locks are released');
  });

  it('a key under an existing key is INVALID_ARGUMENT, not a crash', async () => {
    const dir = join(base, 'clash');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir);
    const s = new FileStore(dir);
    await s.put('a', Buffer.from('1'));
    await rejectsWith(s.put('a/b', Buffer.from('2')), 'INVALID_ARGUMENT', 'a/b');
    await rejectsWith(
      s.put('a/b', Buffer.from('2'), { ifNoneMatch: true }),
      'INVALID_ARGUMENT',
      'a/b',
    );
    assert.equal(await s.head('a/b'), undefined);
    await rejectsWith(s.get('a/b'), 'OBJECT_NOT_FOUND', 'a/b');
  });

  it('tags never repeat for a key, even for same-size rewrites in one clock tick', async () => {
    const dir = join(base, 'aba');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir);
    const s = new FileStore(dir);
    const tags = new Set<string>();
    let { etag } = await s.put('head', Buffer.from('0'));
    tags.add(etag);
    for (let i = 1; i < 200; i++) {
      ({ etag } = await s.put('head', Buffer.from(String(i % 10)), { ifMatch: etag }));
      assert.ok(!tags.has(etag), `tag ${etag} repeated at write ${i}`);
      tags.add(etag);
      if (i % 50 === 0) {
        await s.delete(['head']);
        ({ etag } = await s.put('head', Buffer.from('x'), { ifNoneMatch: true }));
        tags.add(etag);
      }
    }
    assert.equal((await s.head('head'))?.etag, etag);
  });

  it('sweeps temp files of dead writers', async () => {
    const dir = join(base, 'sweep');
    const { mkdir, utimes } = await import('node:fs/promises');
    await mkdir(join(dir, '.hyper', 'tmp'), { recursive: true });
    const dead = join(dir, '.hyper', 'tmp', `${2 ** 22 + 4321}-abc`);
    const mine = join(dir, '.hyper', 'tmp', `${process.pid}-abc`);
    writeFileSync(dead, 'x');
    writeFileSync(mine, 'x');
    const old = new Date(Date.now() - 3_600_000);
    await utimes(dead, old, old);
    await new FileStore(dir).put('k', Buffer.from('v'));
    assert.deepEqual(readdirSync(join(dir, '.hyper', 'tmp')), [`${process.pid}-abc`]);
  });

  it('relative file://./dir/ URLs resolve against the working directory', async () => {
    const s = await openStore('file://./some/dir/');
    assert.equal(s.url, `file://${process.cwd()}/some/dir/`);
  });

  it('breaks a lock left by a dead process', async () => {
    const dir = join(base, 'stale');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir);
    const s = new FileStore(dir);
    const { etag } = await s.put('head', Buffer.from('1'));
    // Plant a lock for "head" held by a pid that does not exist.
    const { createHash } = await import('node:crypto');
    const { hostname } = await import('node:os');
    const lock = join(
      dir,
      '.hyper',
      'locks',
      createHash('sha256').update('head').digest('hex').slice(0, 40),
    );
    writeFileSync(
      lock,
      JSON.stringify({ host: hostname(), pid: 2 ** 22 + 12345, nonce: 'x', time: Date.now() }),
    );
    const t0 = Date.now();
    await s.put('head', Buffer.from('2'), { ifMatch: etag });
    assert.ok(Date.now() - t0 < 5000);
    assert.equal((await s.get('head')).body.toString(), '2');
  });
});
