/**
 * observeStore: each request reported once with its bytes, time and outcome (after retries);
 * each retry reported to the observer of the request it belongs to, also when several
 * observers share one retrying store and their requests interleave (seeded random schedules
 * checked against a model: the expected retries of each observer's own requests).
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { HyperError } from '../../../../src/errors.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import {
  observeStore,
  storeLabel,
  type StoreObserver,
  type StoreRequestEvent,
  type StoreRetryEvent,
} from '../../../../src/format/store/observed.js';
import { RetryingStore } from '../../../../src/format/store/retry.js';
import type { GetOptions, ListOptions } from '../../../../src/format/store/types.js';
import { collect } from '../../../helpers/store-conformance.js';
import { rng } from '../../../helpers/rng.js';

const unavailable = (): HyperError =>
  new HyperError('unavailable', 'STORE_UNAVAILABLE', 'fake: 503 SlowDown');

/**
 * A store whose GETs of `fail<n>-…` keys fail n times with 503 before succeeding, each call
 * after a short random delay (so concurrent requests interleave), and whose list fails once
 * after `listFailAfterPages` pages.
 */
class Flaky extends MemStore {
  private readonly failed = new Map<string, number>();
  listFailAfterPages = -1;
  delay: () => number = () => 0;

  override async get(key: string, options: GetOptions = {}) {
    await sleep(this.delay());
    const n = Number(/^fail(\d+)-/.exec(key)?.[1] ?? 0);
    const seen = this.failed.get(key) ?? 0;
    if (seen < n) {
      this.failed.set(key, seen + 1);
      throw unavailable();
    }
    return super.get(key, options);
  }

  override async *list(prefix: string, options: ListOptions = {}) {
    let n = 0;
    for await (const page of super.list(prefix, options)) {
      if (n === this.listFailAfterPages) {
        this.listFailAfterPages = -1;
        throw unavailable();
      }
      n++;
      yield page;
    }
  }
}

function recorder(): StoreObserver & { requests: StoreRequestEvent[]; retries: StoreRetryEvent[] } {
  const requests: StoreRequestEvent[] = [];
  const retries: StoreRetryEvent[] = [];
  return { requests, retries, request: (e) => requests.push(e), retry: (e) => retries.push(e) };
}

const retrying = (inner: MemStore): RetryingStore =>
  new RetryingStore(inner, { maxAttempts: 5, sleep: () => Promise.resolve() });

describe('observed store', () => {
  it('reports each request with its bytes and outcome, retries to the same observer', async () => {
    const fake = new Flaky('mem://obs/', new Map());
    const rec = recorder();
    const store = observeStore(retrying(fake), rec);
    await store.put('a', Buffer.alloc(100, 1));
    await store.put('fail2-b', Buffer.alloc(50, 2));
    assert.equal((await store.get('fail2-b')).body.length, 50);
    assert.equal(await store.head('missing'), undefined);
    await assert.rejects(store.get('missing'), { code: 'OBJECT_NOT_FOUND' });
    await assert.rejects(store.put('a', Buffer.alloc(1), { ifNoneMatch: true }), {
      code: 'OBJECT_EXISTS',
    });
    await store.delete(['a']);
    await store.delete([]); // nothing to delete: no request
    assert.deepEqual(
      rec.requests.map((r) => [r.op, r.bytes, r.error]),
      [
        ['PUT', 100, undefined],
        ['PUT', 50, undefined],
        ['GET', 50, undefined],
        ['HEAD', 0, undefined],
        ['GET', 0, 'OBJECT_NOT_FOUND'],
        ['PUT', 0, 'OBJECT_EXISTS'],
        ['DELETE', 0, undefined],
      ],
    );
    assert.ok(rec.requests.every((r) => r.seconds >= 0 && r.seconds < 5));
    assert.deepEqual(rec.retries, [
      { op: 'GET', code: 'STORE_UNAVAILABLE', attempt: 1 },
      { op: 'GET', code: 'STORE_UNAVAILABLE', attempt: 2 },
    ]);
  });

  it('counts a LIST per page, its retries as LIST retries, and follows sub()', async () => {
    const fake = new Flaky('mem://obs-list/', new Map());
    fake.pageSize = 2;
    const rec = recorder();
    const store = observeStore(retrying(fake), rec);
    for (const k of ['d/1', 'd/2', 'd/3', 'd/4', 'd/5']) await store.put(k, Buffer.from(k));
    rec.requests.length = 0;
    fake.listFailAfterPages = 1;
    const { keys, pages } = await collect(store, 'd/');
    assert.deepEqual(keys, ['d/1', 'd/2', 'd/3', 'd/4', 'd/5']);
    assert.equal(pages, 3);
    // One LIST per page; the page that failed once is retried inside its request.
    assert.deepEqual(
      rec.requests.map((r) => [r.op, r.error]),
      [
        ['LIST', undefined],
        ['LIST', undefined],
        ['LIST', undefined],
      ],
    );
    assert.deepEqual(rec.retries, [{ op: 'LIST', code: 'STORE_UNAVAILABLE', attempt: 1 }]);

    rec.requests.length = 0;
    assert.equal((await collect(store, 'none/')).keys.length, 0);
    assert.deepEqual(
      rec.requests.map((r) => r.op),
      ['LIST'],
      'an empty listing is one request',
    );
    rec.requests.length = 0;
    const sub = store.sub('d/');
    assert.equal((await sub.get('3')).body.toString(), 'd/3');
    assert.deepEqual(
      rec.requests.map((r) => r.op),
      ['GET'],
    );
  });

  it('an observer that throws changes nothing', async () => {
    const fake = new Flaky('mem://obs-throw/', new Map());
    const store = observeStore(retrying(fake), {
      request: () => {
        throw new Error('observer bug');
      },
      retry: () => {
        throw new Error('observer bug');
      },
    });
    await store.put('fail1-k', Buffer.from('v'));
    assert.equal((await store.get('fail1-k')).body.toString(), 'v');
    await assert.rejects(store.get('nope'), { code: 'OBJECT_NOT_FOUND' });
  });

  for (const seed of [1, 2, 3, 4, 5]) {
    it(`attributes interleaved retries to the right observer (seed ${seed})`, async () => {
      const rand = rng(seed);
      const fake = new Flaky(`mem://obs-mix-${seed}/`, new Map());
      const shared = retrying(fake);
      const observers = [recorder(), recorder(), recorder()];
      const stores = observers.map((o) => observeStore(shared, o));
      const expected = observers.map(() => 0);
      const jobs: Promise<unknown>[] = [];
      // Keys are written through the unobserved store, then read concurrently by random
      // owners after random delays; each key fails its first n GETs.
      for (let i = 0; i < 60; i++) {
        const n = Math.floor(rand() * 4);
        const key = `fail${n}-${i}`;
        await shared.put(key, Buffer.from(key));
        const owner = Math.floor(rand() * observers.length);
        expected[owner]! += n;
        jobs.push(stores[owner]!.get(key));
      }
      fake.delay = () => Math.floor(rand() * 3);
      await Promise.all(jobs);
      observers.forEach((o, i) => {
        assert.equal(o.retries.length, expected[i], `retries seen by observer ${i}`);
        assert.ok(o.retries.every((r) => r.op === 'GET' && r.code === 'STORE_UNAVAILABLE'));
        assert.ok(o.requests.every((r) => r.op === 'GET' && r.error === undefined));
      });
      assert.equal(
        observers.reduce((a, o) => a + o.requests.length, 0),
        60,
        'every request reported once',
      );
    });
  }

  it('labels stores by bucket, not by prefix', () => {
    assert.equal(storeLabel('s3://bucket/vols/vm1/'), 's3://bucket');
    assert.equal(storeLabel('file:///srv/vols/vm1/'), 'file');
    assert.equal(storeLabel('mem://x/'), 'mem');
  });
});
