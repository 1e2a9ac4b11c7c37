/**
 * One behaviour suite for every ObjectStore (mem, file, S3 on Ceph RGW). Each test gets a
 * fresh, empty store from the factory; the factory's stores must use a list page size of
 * `pageSize` so that pagination is exercised with few keys.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { isHyperError, type ErrorCode } from '../../src/errors.js';
import { probeConditionalWrites } from '../../src/format/store/probe.js';
import type { ListOptions, ObjectMeta, ObjectStore } from '../../src/format/store/types.js';
import { inTurns } from './in-turns.js';

export interface ConformanceTarget {
  name: string;
  /** A fresh, empty store (list page size = pageSize). */
  make: () => Promise<ObjectStore>;
  /** Called after each test with the store `make` returned. */
  dispose?: (store: ObjectStore) => Promise<void>;
  pageSize: number;
  /** Keys for the large batch test (> 1000 exercises S3 delete batching). Default 1100. */
  manyKeys?: number;
  /** Whether ETags are the MD5 of the content (S3, RGW, mem). */
  md5Etags?: boolean;
  /** Per-test timeout in ms. */
  timeout?: number;
}

export async function collect(
  store: ObjectStore,
  prefix: string,
  options: ListOptions = {},
): Promise<{ keys: string[]; prefixes: string[]; pages: number; objects: ObjectMeta[] }> {
  const objects: ObjectMeta[] = [];
  const prefixes: string[] = [];
  let pages = 0;
  for await (const p of store.list(prefix, options)) {
    pages++;
    objects.push(...p.objects);
    prefixes.push(...p.prefixes);
  }
  return { keys: objects.map((o) => o.key), prefixes, pages, objects };
}

export async function rejectsWith(
  p: Promise<unknown>,
  code: ErrorCode,
  key?: string,
): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(isHyperError(e, code), `expected ${code}, got ${String((e as Error)?.stack ?? e)}`);
    if (key !== undefined) assert.equal(e.key, key, 'error carries the object key');
    return;
  }
  assert.fail(`expected ${code}, but the call succeeded`);
}

const bytesOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

export function storeConformance(target: ConformanceTarget): void {
  const timeout = target.timeout ?? 60_000;
  const test = (name: string, fn: (s: ObjectStore) => Promise<void>): void => {
    it(name, { timeout }, async () => {
      const s = await target.make();
      try {
        await fn(s);
      } finally {
        await target.dispose?.(s);
      }
    });
  };

  describe(`object store conformance: ${target.name}`, () => {
    test('put, get, head round trip with unquoted etags', async (s) => {
      const body = Buffer.from([0, 1, 2, 255, 254, 10, 13, 34]);
      const { etag } = await s.put('obj', body);
      assert.ok(etag.length > 0 && !etag.includes('"'), `etag ${etag}`);
      if (target.md5Etags) assert.equal(etag, createHash('md5').update(body).digest('hex'));
      const g = await s.get('obj');
      assert.deepEqual(g.body, body);
      assert.equal(g.etag, etag);
      assert.equal(g.size, body.length);
      const h = await s.head('obj');
      assert.ok(h);
      assert.equal(h.key, 'obj');
      assert.equal(h.size, body.length);
      assert.equal(h.etag, etag);
      assert.ok(h.lastModified instanceof Date);
      const again = await s.put('obj', Buffer.from('other'));
      assert.notEqual(again.etag, etag, 'etag changes with the content');
      assert.equal((await s.get('obj')).body.toString(), 'other');
    });

    test('empty objects and nested keys', async (s) => {
      await s.put('e', Buffer.alloc(0));
      const g = await s.get('e');
      assert.equal(g.body.length, 0);
      assert.equal(g.size, 0);
      assert.equal((await s.get('e', { range: { offset: 0, length: 10 } })).body.length, 0);
      await s.put('x/y/z', Buffer.from('deep'));
      assert.equal((await s.get('x/y/z')).body.toString(), 'deep');
      assert.equal((await s.head('x/y/z'))?.size, 4);
    });

    test('ranged reads, including past the end', async (s) => {
      const body = Buffer.from('0123456789abcdef');
      const { etag } = await s.put('r', body);
      const mid = await s.get('r', { range: { offset: 3, length: 4 } });
      assert.equal(mid.body.toString(), '3456');
      assert.equal(mid.size, 16);
      assert.equal(mid.etag, etag);
      assert.equal((await s.get('r', { range: { offset: 0, length: 1 } })).body.toString(), '0');
      const tail = await s.get('r', { range: { offset: 12, length: 100 } });
      assert.equal(tail.body.toString(), 'cdef');
      assert.equal(tail.size, 16);
      const atEnd = await s.get('r', { range: { offset: 16, length: 4 } });
      assert.equal(atEnd.body.length, 0);
      assert.equal(atEnd.size, 16);
      const past = await s.get('r', { range: { offset: 1000, length: 4 } });
      assert.equal(past.body.length, 0);
      assert.equal(past.size, 16);
      await rejectsWith(
        s.get('nope', { range: { offset: 0, length: 4 } }),
        'OBJECT_NOT_FOUND',
        'nope',
      );
    });

    test('missing keys: head is undefined, get is OBJECT_NOT_FOUND with the key', async (s) => {
      assert.equal(await s.head('missing'), undefined);
      assert.equal(await s.head('missing/deeper'), undefined);
      await rejectsWith(s.get('missing'), 'OBJECT_NOT_FOUND', 'missing');
      await rejectsWith(s.get('dir/missing'), 'OBJECT_NOT_FOUND', 'dir/missing');
    });

    test('list is in byte order and filters by prefix', async (s) => {
      const keys = ['b', 'a/c/d', '0', 'a-b', 'a0', 'B', 'a/b', 'ab/x'];
      for (const k of keys) await s.put(k, Buffer.from(k));
      const all = await collect(s, '');
      assert.deepEqual(all.keys, [...keys].sort(bytesOrder));
      assert.deepEqual(all.prefixes, []);
      assert.deepEqual((await collect(s, 'a/')).keys, ['a/b', 'a/c/d']);
      assert.deepEqual((await collect(s, 'a')).keys, ['a-b', 'a/b', 'a/c/d', 'a0', 'ab/x']);
      assert.deepEqual((await collect(s, 'zz')).keys, []);
      const meta = all.objects.find((o) => o.key === 'a-b');
      assert.equal(meta?.size, 3);
      assert.equal(meta?.etag, (await s.head('a-b'))?.etag);
    });

    test('list paginates in order', async (s) => {
      const n = target.pageSize * 2 + 3;
      const keys = Array.from({ length: n }, (_, i) => `p/${String(i).padStart(4, '0')}`);
      await inTurns(keys, 16, (k) => s.put(k, Buffer.from(k)));
      const r = await collect(s, 'p/');
      assert.deepEqual(r.keys, keys);
      assert.ok(r.pages >= 3, `expected at least 3 pages, got ${r.pages}`);
      const after = await collect(s, 'p/', { startAfter: keys[target.pageSize] });
      assert.deepEqual(after.keys, keys.slice(target.pageSize + 1));
    });

    test('delimiter rolls up common prefixes', async (s) => {
      for (const k of ['d/x', 'd/y/1', 'd/y/2', 'd/z/3/4', 'd/w', 'e/1', 'top'])
        await s.put(k, Buffer.from(k));
      const r = await collect(s, 'd/', { delimiter: '/' });
      assert.deepEqual(r.keys, ['d/w', 'd/x']);
      assert.deepEqual(r.prefixes, ['d/y/', 'd/z/']);
      const root = await collect(s, '', { delimiter: '/' });
      assert.deepEqual(root.keys, ['top']);
      assert.deepEqual(root.prefixes, ['d/', 'e/']);
    });

    test('startAfter lists strictly after a key', async (s) => {
      const keys = ['k/01', 'k/02', 'k/03', 'k/04/a', 'k/05', 'l'];
      for (const k of keys) await s.put(k, Buffer.from(k));
      assert.deepEqual((await collect(s, 'k/', { startAfter: 'k/02' })).keys, [
        'k/03',
        'k/04/a',
        'k/05',
      ]);
      assert.deepEqual((await collect(s, '', { startAfter: 'k/04' })).keys, [
        'k/04/a',
        'k/05',
        'l',
      ]);
      assert.deepEqual((await collect(s, '', { startAfter: 'k/04/a' })).keys, ['k/05', 'l']);
      assert.deepEqual((await collect(s, 'k/', { startAfter: 'k/99' })).keys, []);
    });

    test('delete removes keys; missing keys are not an error', async (s) => {
      for (const k of ['a', 'b/c', 'b/d', 'e']) await s.put(k, Buffer.from(k));
      await s.delete(['a', 'b/c', 'not-there', 'x/y/not-there']);
      assert.equal(await s.head('a'), undefined);
      assert.equal(await s.head('b/c'), undefined);
      assert.deepEqual((await collect(s, '')).keys, ['b/d', 'e']);
      await s.delete(['b/d']);
      const r = await collect(s, '', { delimiter: '/' });
      assert.deepEqual(r.keys, ['e']);
      assert.deepEqual(r.prefixes, [], 'no prefix left for a deleted subtree');
      await s.delete([]);
    });

    test(`a batch of ${target.manyKeys ?? 1100} keys: list all, delete all`, async (s) => {
      const n = target.manyKeys ?? 1100;
      const keys = Array.from({ length: n }, (_, i) => `m/${String(i).padStart(5, '0')}`);
      await inTurns(keys, 32, (k) => s.put(k, Buffer.alloc(1)));
      const r = await collect(s, 'm/');
      assert.equal(r.keys.length, n);
      assert.deepEqual(r.keys, keys);
      await s.delete(keys);
      assert.deepEqual((await collect(s, 'm/')).keys, []);
    });

    test('create-only: the second write fails with OBJECT_EXISTS and changes nothing', async (s) => {
      const first = await s.put('c', Buffer.from('one'), { ifNoneMatch: true });
      await rejectsWith(
        s.put('c', Buffer.from('two'), { ifNoneMatch: true }),
        'OBJECT_EXISTS',
        'c',
      );
      const g = await s.get('c');
      assert.equal(g.body.toString(), 'one');
      assert.equal(g.etag, first.etag);
      await s.put('n/e/w', Buffer.from('x'), { ifNoneMatch: true });
      assert.equal((await s.get('n/e/w')).body.toString(), 'x');
    });

    test('create-only race: exactly one of many concurrent writers wins', async (s) => {
      const results = await Promise.allSettled(
        Array.from({ length: 8 }, (_, i) =>
          s.put('race', Buffer.from(`writer ${i}`), { ifNoneMatch: true }),
        ),
      );
      const won = results.filter((r) => r.status === 'fulfilled');
      assert.equal(won.length, 1);
      for (const r of results) {
        if (r.status === 'rejected')
          assert.ok(isHyperError(r.reason, 'OBJECT_EXISTS'), String(r.reason));
      }
      const winner = results.findIndex((r) => r.status === 'fulfilled');
      assert.equal((await s.get('race')).body.toString(), `writer ${winner}`);
    });

    test('compare-and-swap: current tag wins, stale tag and missing key fail', async (s) => {
      const v1 = await s.put('head', Buffer.from('v1'), { ifNoneMatch: true });
      const v2 = await s.put('head', Buffer.from('v2'), { ifMatch: v1.etag });
      assert.notEqual(v2.etag, v1.etag);
      assert.equal((await s.head('head'))?.etag, v2.etag);
      await rejectsWith(
        s.put('head', Buffer.from('v3'), { ifMatch: v1.etag }),
        'PRECONDITION_FAILED',
        'head',
      );
      assert.equal((await s.get('head')).body.toString(), 'v2');
      await rejectsWith(
        s.put('absent', Buffer.from('x'), { ifMatch: v1.etag }),
        'PRECONDITION_FAILED',
        'absent',
      );
      assert.equal(await s.head('absent'), undefined);
      const v3 = await s.put('head', Buffer.from('v3'), { ifMatch: v2.etag });
      assert.equal((await s.get('head')).etag, v3.etag);
    });

    test('compare-and-swap race: one of many writers with the same tag wins', async (s) => {
      const { etag } = await s.put('cas', Buffer.from('0'));
      const results = await Promise.allSettled(
        Array.from({ length: 6 }, (_, i) => s.put('cas', Buffer.from(`w${i}`), { ifMatch: etag })),
      );
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      for (const r of results) {
        if (r.status === 'rejected')
          assert.ok(isHyperError(r.reason, 'PRECONDITION_FAILED'), String(r.reason));
      }
    });

    test('sub() stores see a prefix of the parent', async (s) => {
      const sub = s.sub('vol/');
      assert.equal(sub.url, `${s.url}vol/`);
      await sub.put('k', Buffer.from('in sub'));
      assert.equal((await s.get('vol/k')).body.toString(), 'in sub');
      await s.put('vol/j', Buffer.from('from parent'));
      await s.put('other', Buffer.from('outside'));
      assert.deepEqual((await collect(sub, '')).keys, ['j', 'k']);
      const subsub = sub.sub('deep/');
      await subsub.put('x', Buffer.from('x'));
      assert.deepEqual((await collect(sub, '', { delimiter: '/' })).prefixes, ['deep/']);
      assert.deepEqual((await collect(sub, '', { startAfter: 'j' })).keys, ['k']);
      await rejectsWith(sub.get('missing'), 'OBJECT_NOT_FOUND', 'missing');
      await rejectsWith(
        sub.put('k', Buffer.from('again'), { ifNoneMatch: true }),
        'OBJECT_EXISTS',
        'k',
      );
      await sub.delete(['k', 'j']);
      assert.equal(await s.head('vol/k'), undefined);
      assert.equal((await s.get('other')).body.toString(), 'outside');
    });

    test('probeConditionalWrites accepts the store and leaves nothing behind', async (s) => {
      await probeConditionalWrites(s);
      assert.deepEqual((await collect(s, '')).keys, []);
    });

    test('a 5 MiB object round trips, ranged reads at large offsets', async (s) => {
      const body = Buffer.alloc(5 * 1024 * 1024);
      for (let i = 0; i < body.length; i += 4) body.writeUInt32LE(i, i);
      await s.put('big', body, { ifNoneMatch: true });
      const g = await s.get('big');
      assert.equal(g.size, body.length);
      assert.ok(g.body.equals(body));
      const part = await s.get('big', { range: { offset: 4 * 1024 * 1024 + 8, length: 4096 } });
      assert.ok(part.body.equals(body.subarray(4 * 1024 * 1024 + 8, 4 * 1024 * 1024 + 8 + 4096)));
    });

    test('a body in pieces is stored as the pieces back to back, conditional or not', async (s) => {
      const body = Buffer.alloc(3 * 1024 * 1024 + 517);
      for (let i = 0; i + 4 <= body.length; i += 4) body.writeUInt32LE((i * 2654435761) >>> 0, i);
      // Uneven pieces, an empty one among them, and many small ones (a gather write of a
      // segment: its header buffer, runs of blocks, copied blocks), more than a writev takes.
      const cuts = [0, 1, 1, 4096, 70_000, 1_000_000, 1_000_512];
      for (let at = 1_000_512; at < 2_000_000; at += 512) cuts.push(at);
      cuts.push(body.length);
      const pieces = cuts.slice(1).map((end, k) => body.subarray(cuts[k] as number, end));
      const { etag } = await s.put('pieces', pieces, { ifNoneMatch: true });
      if (target.md5Etags) assert.equal(etag, createHash('md5').update(body).digest('hex'));
      assert.ok((await s.get('pieces')).body.equals(body));
      assert.equal((await s.head('pieces'))?.size, body.length);
      await rejectsWith(s.put('pieces', pieces, { ifNoneMatch: true }), 'OBJECT_EXISTS');
      // The same bytes, pieces reversed, under compare-and-swap: the order is the caller's.
      const swapped = [body.subarray(2_000_000), body.subarray(0, 2_000_000)];
      await s.put('pieces', swapped, { ifMatch: etag });
      assert.ok((await s.get('pieces')).body.equals(Buffer.concat(swapped)));
      await s.put('none', []);
      assert.equal((await s.get('none')).body.length, 0);
      // The pieces are the caller's again once the PUT has returned.
      pieces[3]?.fill(7);
      assert.ok(!(await s.get('pieces')).body.includes(Buffer.alloc(64, 7)));
    });
  });
}
