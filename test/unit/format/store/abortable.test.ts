/**
 * AbortableStore: once its signal fires, every request ends with the signal's reason, whether
 * the store below honours the signal it was passed (it sees it) or hangs regardless; requests
 * that answered before are untouched.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { AbortableStore } from '../../../../src/format/store/abortable.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { ObjectStore } from '../../../../src/format/store/index.js';

/** A store that never answers once `hang` is set, and records the signals it was given. */
class HangingStore implements ObjectStore {
  hang = false;
  readonly signals: (AbortSignal | undefined)[] = [];
  constructor(private readonly inner: ObjectStore) {}
  get url(): string {
    return this.inner.url;
  }
  private wait<T>(signal: AbortSignal | undefined, f: () => Promise<T>): Promise<T> {
    this.signals.push(signal);
    return this.hang ? new Promise<T>(() => undefined) : f();
  }
  get(...a: Parameters<ObjectStore['get']>) {
    return this.wait(a[1]?.signal, () => this.inner.get(...a));
  }
  head(...a: Parameters<ObjectStore['head']>) {
    return this.wait(a[1]?.signal, () => this.inner.head(...a));
  }
  put(...a: Parameters<ObjectStore['put']>) {
    return this.wait(a[2]?.signal, () => this.inner.put(...a));
  }
  async *list(...a: Parameters<ObjectStore['list']>) {
    const pages = await this.wait(a[1]?.signal, async () => {
      const out = [];
      for await (const p of this.inner.list(...a)) out.push(p);
      return out;
    });
    yield* pages;
  }
  delete(...a: Parameters<ObjectStore['delete']>) {
    return this.wait(a[1]?.signal, () => this.inner.delete(...a));
  }
  sub(prefix: string): ObjectStore {
    return new HangingStore(this.inner.sub(prefix));
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

describe('AbortableStore', () => {
  it('ends every hanging request with the reason once aborted, and passes the signal down', async () => {
    const inner = new HangingStore(new MemStore('mem://abortable-test/'));
    const ac = new AbortController();
    const store = new AbortableStore(inner, ac.signal);
    await store.put('a', Buffer.from('x'));
    assert.equal((await store.get('a')).body.toString(), 'x');
    const mine = new AbortController();
    await store.head('a', { signal: mine.signal });
    assert.ok(
      inner.signals.every((s) => s !== undefined),
      'every request got a signal',
    );
    // The caller's own signal still counts (combined with the store's).
    mine.abort();
    assert.equal(inner.signals.at(-1)?.aborted, true);

    inner.hang = true;
    const pending = [
      store.get('a'),
      store.head('a'),
      store.put('b', Buffer.from('y')),
      store.delete(['a']),
      (async () => {
        for await (const page of store.list('')) void page;
      })(),
    ];
    const reason = new HyperError('unavailable', 'ABORTED', 'given up (test)');
    setTimeout(() => ac.abort(reason), 20);
    const results = await Promise.allSettled(pending);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.equal((r as PromiseRejectedResult).reason, reason);
    }
    // Later requests fail at once, without reaching the store.
    const seen = inner.signals.length;
    await assert.rejects(store.get('a'), (e: unknown) => isHyperError(e, 'ABORTED'));
    assert.equal(inner.signals.length, seen);
  });
});
