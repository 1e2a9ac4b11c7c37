import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { RetryingStore } from '../../../../src/format/store/retry.js';
import type { ObjectStore, PutBody, PutOptions } from '../../../../src/format/store/types.js';
import { collect, rejectsWith } from '../../../helpers/store-conformance.js';

const unavailable = (what: string): HyperError =>
  new HyperError('unavailable', 'STORE_UNAVAILABLE', `fake: ${what}`);

/** A store that fails scripted calls: `plan` holds what each next put/get attempt does. */
class FlakyStore extends MemStore {
  putPlan: Array<'ok' | '503' | 'land-then-fail'> = [];
  getPlan: Array<'ok' | '503' | 'denied'> = [];
  listFailAfterPages = -1;
  puts = 0;
  gets = 0;

  override put(key: string, body: PutBody, options: PutOptions = {}): Promise<{ etag: string }> {
    this.puts++;
    const step = this.putPlan.shift() ?? 'ok';
    if (step === '503') return Promise.reject(unavailable('503 SlowDown'));
    if (step === 'land-then-fail') {
      // The write lands but the response is lost.
      return super
        .put(key, body, options)
        .then(() => Promise.reject(unavailable('connection reset')));
    }
    return super.put(key, body, options);
  }

  override get(key: string, options = {}) {
    this.gets++;
    const step = this.getPlan.shift() ?? 'ok';
    if (step === '503') return Promise.reject(unavailable('500 InternalError'));
    if (step === 'denied')
      return Promise.reject(new HyperError('unavailable', 'ACCESS_DENIED', 'fake: 403'));
    return super.get(key, options);
  }

  override async *list(prefix: string, options = {}) {
    let n = 0;
    for await (const page of super.list(prefix, options)) {
      if (this.listFailAfterPages >= 0 && n === this.listFailAfterPages) {
        this.listFailAfterPages = -1;
        throw unavailable('list timeout');
      }
      n++;
      yield page;
    }
  }
}

const noSleep = (): Promise<void> => Promise.resolve();

function setup(): { fake: FlakyStore; store: ObjectStore; delays: number[] } {
  const fake = new FlakyStore('mem://retry/', new Map());
  const delays: number[] = [];
  const store = new RetryingStore(fake, {
    maxAttempts: 4,
    baseDelayMs: 100,
    maxDelayMs: 1000,
    sleep: (ms) => {
      delays.push(ms);
      return Promise.resolve();
    },
  });
  return { fake, store, delays };
}

describe('retrying store', () => {
  it('retries throttling and 5xx with bounded, jittered backoff', async () => {
    const { fake, store, delays } = setup();
    fake.putPlan = ['503', '503', 'ok'];
    await store.put('k', Buffer.from('v'));
    assert.equal(fake.puts, 3);
    assert.equal(delays.length, 2);
    assert.ok(delays[0]! >= 0 && delays[0]! <= 100);
    assert.ok(delays[1]! >= 0 && delays[1]! <= 200);
    fake.getPlan = ['503', 'ok'];
    assert.equal((await store.get('k')).body.toString(), 'v');
    assert.equal(fake.gets, 2);
  });

  it('gives up after maxAttempts with STORE_UNAVAILABLE', async () => {
    const { fake, store } = setup();
    fake.putPlan = ['503', '503', '503', '503', '503'];
    await rejectsWith(store.put('k', Buffer.from('v')), 'STORE_UNAVAILABLE');
    assert.equal(fake.puts, 4);
  });

  it('never retries 412, 404 or 403', async () => {
    const { fake, store, delays } = setup();
    await store.put('k', Buffer.from('v'));
    fake.puts = 0;
    await rejectsWith(
      store.put('k', Buffer.from('w'), { ifNoneMatch: true }),
      'OBJECT_EXISTS',
      'k',
    );
    await rejectsWith(
      store.put('k', Buffer.from('w'), { ifMatch: 'stale' }),
      'PRECONDITION_FAILED',
      'k',
    );
    assert.equal(fake.puts, 2);
    await rejectsWith(store.get('missing'), 'OBJECT_NOT_FOUND', 'missing');
    fake.getPlan = ['denied'];
    await rejectsWith(store.get('k'), 'ACCESS_DENIED');
    assert.equal(fake.gets, 2);
    assert.deepEqual(delays, []);
  });

  it('a create-only PUT that landed before its response was lost counts as success', async () => {
    const { fake, store } = setup();
    fake.putPlan = ['land-then-fail'];
    const r = await store.put('seg', Buffer.from('segment bytes'), { ifNoneMatch: true });
    assert.equal(fake.puts, 2, 'retried once; the retry got OBJECT_EXISTS');
    assert.equal(r.etag, (await fake.head('seg'))?.etag);
  });

  it('a landed CAS whose response was lost counts as success', async () => {
    const { fake, store } = setup();
    const { etag } = await store.put('head', Buffer.from('v1'));
    fake.putPlan = ['land-then-fail'];
    const r = await store.put('head', Buffer.from('v2'), { ifMatch: etag });
    assert.equal(r.etag, (await fake.head('head'))?.etag);
    assert.equal((await fake.get('head')).body.toString(), 'v2');
  });

  it('a landed create-only PUT is recognised by its bytes when the ETag is not an MD5', async () => {
    const { fake, store } = setup();
    const head = fake.head.bind(fake);
    fake.head = async (key) => {
      const m = await head(key);
      return m && { ...m, etag: `opaque-${m.etag}` };
    };
    fake.putPlan = ['land-then-fail'];
    await store.put('seg', Buffer.from('segment'), { ifNoneMatch: true });
    fake.putPlan = ['503'];
    await MemStore.prototype.put.call(fake, 'other', Buffer.from('theirs!'));
    await rejectsWith(
      store.put('other', Buffer.from('ours!!!'), { ifNoneMatch: true }),
      'OBJECT_EXISTS',
      'other',
    );
  });

  it("someone else's object after a failed create-only attempt is still OBJECT_EXISTS", async () => {
    const { fake, store } = setup();
    fake.putPlan = ['503'];
    // Another writer creates the key between our failed attempt and the retry.
    const orig = fake.put.bind(fake);
    let first = true;
    fake.put = (key, body, options) => {
      if (first) {
        first = false;
        return orig(key, body, options).catch(async (e: unknown) => {
          await MemStore.prototype.put.call(fake, key, Buffer.from('theirs'));
          throw e;
        });
      }
      return orig(key, body, options);
    };
    await rejectsWith(
      store.put('seg', Buffer.from('ours'), { ifNoneMatch: true }),
      'OBJECT_EXISTS',
      'seg',
    );
    assert.equal((await fake.get('seg')).body.toString(), 'theirs');
  });

  it('a list that fails mid-way resumes after the last key, without repeats', async () => {
    const { fake, store } = setup();
    fake.pageSize = 3;
    const keys = Array.from({ length: 10 }, (_, i) => `k${i}`);
    for (const k of keys) await fake.put(k, Buffer.from(k));
    fake.listFailAfterPages = 2;
    const r = await collect(store, '');
    assert.deepEqual(r.keys, keys);
  });

  it('is transparent for sub() stores', async () => {
    const { fake, store } = setup();
    const sub = store.sub('v/');
    fake.putPlan = ['503'];
    await sub.put('x', Buffer.from('1'));
    assert.equal((await fake.get('v/x')).body.toString(), '1');
    assert.ok(isHyperError(await sub.get('nope').catch((e: unknown) => e), 'OBJECT_NOT_FOUND'));
    void noSleep;
  });
});
