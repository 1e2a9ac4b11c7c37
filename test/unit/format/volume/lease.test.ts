import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { decodeLease, encodeLease } from '../../../../src/format/codec/lease.js';
import { LEASE_KEY } from '../../../../src/format/keys.js';
import type { ObjectStore } from '../../../../src/format/store/index.js';
import type { GetOptions, PutBody, PutOptions } from '../../../../src/format/store/types.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { joinBody } from '../../../../src/format/store/common.js';
import { Lease, readLease } from '../../../../src/format/volume/lease.js';
import type { LeaseRecord } from '../../../../src/format/codec/lease.js';
import { rng } from '../../../helpers/rng.js';

const opts = (holder: string, extra: Partial<Parameters<typeof Lease.acquire>[1]> = {}) => ({
  holder,
  ttlMs: 60_000,
  force: false,
  minEpoch: 0,
  ...extra,
});

describe('lease', () => {
  it('is taken create-only, refused while live, and raises the epoch on every acquisition', async () => {
    const store = MemStore.isolated();
    const a = await Lease.acquire(store, opts('a', { minEpoch: 4 }));
    assert.equal(a.epoch, 5, 'above the epoch the head has seen');
    await assert.rejects(Lease.acquire(store, opts('b')), (e) => {
      assert.ok(isHyperError(e, 'LEASE_HELD'));
      assert.match(e.message, /in use by a \(lease epoch 5/);
      return true;
    });
    await a.release();
    const stored = decodeLease((await store.get(LEASE_KEY)).body);
    assert.equal(stored.expiresMs, 0, 'released: expired, epoch kept');
    assert.equal(stored.epoch, 5);
    const b = await Lease.acquire(store, opts('b'));
    assert.equal(b.epoch, 6);
    await b.release();
  });

  it('force takes a live lease; the old holder learns it at its next renewal and stays fenced', async () => {
    const store = MemStore.isolated();
    const a = await Lease.acquire(store, opts('a'));
    const b = await Lease.acquire(store, opts('b', { force: true }));
    assert.equal(b.epoch, a.epoch + 1);
    await assert.rejects(
      a.renew(),
      (e) => isHyperError(e, 'FENCED') && /taken over by b/.test(e.message),
    );
    assert.ok(a.lost);
    assert.equal(a.validFor(0), false);
    await a.release(); // a lost lease is not released (it is not ours to release)
    assert.equal((await readLease(store))?.lease.holder, 'b');
    await b.renew();
    assert.ok(b.validFor(30_000));
    await b.release();
  });

  it('an expired lease is free for the next writer without --force', async () => {
    const store = MemStore.isolated();
    const a = await Lease.acquire(store, opts('a', { ttlMs: 1 }));
    await new Promise((r) => setTimeout(r, 10));
    const b = await Lease.acquire(store, opts('b'));
    assert.equal(b.epoch, a.epoch + 1);
    a.stop();
    await b.release();
  });

  it('two concurrent acquisitions: exactly one wins', async () => {
    const store = MemStore.isolated();
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => Lease.acquire(store, opts(`w${i}`))),
    );
    const won = results.filter((r) => r.status === 'fulfilled');
    assert.equal(won.length, 1);
    for (const r of results)
      if (r.status === 'rejected') assert.ok(isHyperError(r.reason, 'LEASE_HELD'));
    await (won[0] as PromiseFulfilledResult<Lease>).value.release();
  });

  it("reclaim takes back the holder's own live lease only, and never undoes a takeover made meanwhile", async () => {
    const store = MemStore.isolated();
    const a = await Lease.acquire(store, opts('a'));
    a.stop();
    // Its own lease, still live (a failed close left it): taken back without force.
    const again = await Lease.acquire(store, opts('a', { reclaim: true }));
    assert.equal(again.epoch, a.epoch + 1);
    again.stop();
    await assert.rejects(Lease.acquire(store, opts('c', { reclaim: true })), (e) =>
      isHyperError(e, 'LEASE_HELD'),
    );
    // B takes the lease over by force between a's look at the lease and a's write: the
    // compare-and-swap fails, a looks again, sees B's lease and is refused.
    let interpose: (() => Promise<unknown>) | undefined = () =>
      Lease.acquire(store, opts('b', { force: true }));
    const racing: ObjectStore = Object.assign(Object.create(store) as ObjectStore, {
      put: async (...args: Parameters<ObjectStore['put']>) => {
        const run = interpose;
        interpose = undefined;
        if (run) await run();
        return store.put(...args);
      },
    });
    await assert.rejects(Lease.acquire(racing, opts('a', { reclaim: true })), (e) => {
      assert.ok(isHyperError(e, 'LEASE_HELD'));
      assert.match(e.message, /in use by b/);
      return true;
    });
    const now = await readLease(store);
    assert.equal(now?.lease.holder, 'b');
    assert.equal(now?.lease.epoch, again.epoch + 1);
  });

  it('a renewal that landed unanswered, with the store failing the read that would show it, is no takeover', async () => {
    const inner = MemStore.isolated();
    let landsUnanswered = false;
    let failReads = 0;
    const store = new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'put')
          return async (...args: Parameters<ObjectStore['put']>) => {
            const r = await target.put(...args);
            if (args[0] === LEASE_KEY && landsUnanswered) {
              landsUnanswered = false;
              throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'timed out');
            }
            return r;
          };
        if (prop === 'get')
          return async (...args: Parameters<ObjectStore['get']>) => {
            if (args[0] === LEASE_KEY && failReads > 0) {
              failReads--;
              throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'injected: get lease');
            }
            return target.get(...args);
          };
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const a = await Lease.acquire(store, opts('a'));
    const epoch = a.epoch;
    // (Each renewal a later millisecond than the last: the records differ, so do their ETags.)
    const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 5));
    await tick();
    landsUnanswered = true;
    await assert.rejects(a.renew(), (e) => isHyperError(e, 'STORE_UNAVAILABLE'));
    // The next renewal's compare-and-swap fails (the record moved on: our own renewal), and
    // the read that would show whose record it is fails too: that renewal fails with the
    // store's error, the lease is not given up, and the one after finds its record.
    await tick();
    failReads = 1;
    await assert.rejects(a.renew(), (e) => isHyperError(e, 'STORE_UNAVAILABLE'));
    assert.equal(a.lost, undefined);
    await tick();
    await a.renew();
    assert.equal(a.lost, undefined);
    assert.equal(a.epoch, epoch);
    assert.ok(a.validFor(1000));
    await a.release();
  });

  it('a lease the store will not renew lapses; a renewal once it answers takes it back, unless another writer took it meanwhile', async () => {
    const inner = MemStore.isolated();
    let mode: 'ok' | 'full' | 'lands-unanswered' = 'ok';
    const store = new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'put')
          return async (...args: Parameters<ObjectStore['put']>) => {
            if (args[0] === LEASE_KEY && mode === 'full')
              throw new HyperError('unavailable', 'NO_SPACE', 'the store is over quota');
            const r = await target.put(...args);
            if (args[0] === LEASE_KEY && mode === 'lands-unanswered') {
              mode = 'ok';
              throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'timed out');
            }
            return r;
          };
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const wait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
    const a = await Lease.acquire(store, opts('a', { ttlMs: 600 }));
    const lapses: (string | undefined)[] = [];
    const lost: HyperError[] = [];
    a.startRenewal(
      (e) => lost.push(e),
      (why) => lapses.push(why?.code),
    );
    try {
      // The store refuses the renewals past the expiry: lapsed, not lost.
      mode = 'full';
      await wait(900);
      assert.ok(a.lapsed && isHyperError(a.lapsed, 'NO_SPACE'));
      assert.equal(a.lost, undefined);
      assert.equal(a.validFor(0), false, 'nothing is committed while lapsed');
      assert.deepEqual(lapses, ['NO_SPACE']);
      // It answers again: the next renewal takes the lease back, same epoch.
      mode = 'ok';
      await wait(400);
      assert.equal(a.lapsed, undefined);
      assert.ok(a.validFor(0));
      assert.deepEqual(lapses, ['NO_SPACE', undefined]);
      const epoch = a.epoch;

      // A renewal that lands but whose answer is lost: the next one finds its own record.
      mode = 'lands-unanswered';
      await a.renew().catch(() => undefined);
      await a.renew();
      assert.equal(a.lost, undefined);
      assert.equal(a.epoch, epoch);

      // Lapsed again, and another writer takes the expired lease: lost for good.
      mode = 'full';
      await wait(900);
      assert.ok(a.lapsed);
      const b = await Lease.acquire(inner, opts('b'));
      assert.equal(b.epoch, epoch + 1);
      mode = 'ok';
      await assert.rejects(
        a.renew(),
        (e) => isHyperError(e, 'FENCED') && /taken over by b/.test(e.message),
      );
      await wait(300);
      assert.equal(lost.length >= 1, true);
      assert.equal(a.validFor(0), false);
      assert.equal((await readLease(inner))?.lease.holder, 'b');
      await b.release();
    } finally {
      a.stop();
    }
  });

  it('a damaged lease record is a data error naming its key', async () => {
    const store = MemStore.isolated();
    await store.put(LEASE_KEY, Buffer.from('not a lease'));
    await assert.rejects(readLease(store), (e) => {
      assert.ok(isHyperError(e, 'CORRUPT_OBJECT'));
      assert.match(e.message, /lease/);
      return true;
    });
  });
});

describe('lease damage', () => {
  it('a damaged lease refuses a plain acquire but --force replaces it with a higher epoch', async () => {
    const store = MemStore.isolated();
    await store.put(LEASE_KEY, Buffer.from('garbage'));
    await assert.rejects(Lease.acquire(store, opts('a', { minEpoch: 7 })), (e) =>
      isHyperError(e, 'CORRUPT_OBJECT'),
    );
    const l = await Lease.acquire(store, opts('a', { minEpoch: 7, force: true }));
    assert.equal(l.epoch, 8, 'above the head epoch');
    assert.equal((await readLease(store))?.lease.holder, 'a');
    await l.release();
  });
});

describe('lease holders on this machine', () => {
  it('a live lease whose holder is a dead process of this machine is free; a live process keeps it', async () => {
    const { spawn, spawnSync } = await import('node:child_process');
    const { hostname } = await import('node:os');
    const { processHolder, displayHolder } = await import('../../../../src/format/volume/lease.js');
    const identity = processHolder('x').split('#')[1];
    assert.ok(identity, 'Linux gives this process an identity (pid namespace and boot id)');
    const holderFor = (pid: number): string => `hyper-serve@${hostname()}:${pid}#${identity}`;

    const store = MemStore.isolated();
    const dead = spawnSync('true').pid as number;
    const a = await Lease.acquire(store, opts(holderFor(dead)));
    a.stop();
    const b = await Lease.acquire(store, opts('restarted'));
    assert.equal(b.epoch, a.epoch + 1, 'taken without --force');
    await b.release();

    const sleeper = spawn('sleep', ['30']);
    try {
      const c = await Lease.acquire(store, opts(holderFor(sleeper.pid as number)));
      c.stop();
      await assert.rejects(Lease.acquire(store, opts('other')), (e) => {
        assert.ok(isHyperError(e, 'LEASE_HELD'));
        assert.ok(e.message.includes(`hyper-serve@${hostname()}:${sleeper.pid} `));
        assert.ok(!e.message.includes('#'), 'people see the holder without its identity');
        return true;
      });
    } finally {
      sleeper.kill();
    }
    assert.equal(displayHolder(holderFor(1)), `hyper-serve@${hostname()}:1`);
    // Another machine's holder (or one without identity) is never judged dead.
    const d = await Lease.acquire(
      store,
      opts(`hyper-serve@elsewhere:${dead}#${identity}`, { force: true }),
    );
    d.stop();
    await assert.rejects(Lease.acquire(store, opts('other')), (e) => isHyperError(e, 'LEASE_HELD'));
  });

  // Acquisitions by several holders at once, each plain, by force or reclaiming its own, over
  // a store that interleaves them and fails some lease PUTs before or after they land (a
  // failure after landing is a process that died right after its write). Every record that
  // landed is checked against the one it replaced. The holder names carry the mode.
  it('concurrent plain, forced and reclaiming acquisitions never break the lease rules (seeded)', async () => {
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const rand = rng(seed);
      const inner = MemStore.isolated();
      const landed: LeaseRecord[] = [];
      const yieldSome = async (): Promise<void> => {
        for (let n = Math.floor(rand() * 3); n > 0; n--) await new Promise((r) => setImmediate(r));
      };
      const store: ObjectStore = Object.assign(Object.create(inner) as ObjectStore, {
        get: async (...args: Parameters<ObjectStore['get']>) => {
          await yieldSome();
          return inner.get(...args);
        },
        put: async (...args: Parameters<ObjectStore['put']>) => {
          await yieldSome();
          const fault = rand();
          if (fault < 0.1) throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'injected');
          const p = inner.put(...args);
          // MemStore decides at once: callbacks run in landing order.
          void p.then(
            () => landed.push(decodeLease(joinBody(args[1]))),
            () => undefined,
          );
          const r = await p;
          if (fault < 0.2) throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'injected');
          return r;
        },
      });
      const modes = ['plain', 'force', 'reclaim'] as const;
      let won = 0;
      for (let round = 0; round < 12; round++) {
        await Promise.all(
          Array.from({ length: 5 }, async () => {
            const name = ['a', 'b', 'c'][Math.floor(rand() * 3)]!;
            const mode = modes[Math.floor(rand() * 3)]!;
            try {
              const l = await Lease.acquire(
                store,
                opts(`${name}:${mode}`, { force: mode === 'force', reclaim: mode === 'reclaim' }),
              );
              l.stop();
              won++;
            } catch (e) {
              assert.ok(
                isHyperError(e, 'LEASE_HELD') || isHyperError(e, 'STORE_UNAVAILABLE'),
                String(e),
              );
            }
          }),
        );
      }
      assert.ok(
        won > 5 && landed.length >= won,
        `seed ${seed}: ${won} won, ${landed.length} landed`,
      );
      for (let i = 0; i < landed.length; i++) {
        const now = landed[i]!;
        const before = landed[i - 1];
        const why = `seed ${seed}: ${before?.holder}#${before?.epoch} -> ${now.holder}#${now.epoch}`;
        if (before !== undefined) assert.ok(now.epoch > before.epoch, why);
        // Nothing expires in this test (60 s TTL): only force replaces another holder's lease.
        if (now.holder.endsWith(':plain')) assert.equal(before, undefined, why);
        if (now.holder.endsWith(':reclaim') && before !== undefined)
          assert.equal(before.holder, now.holder, why);
      }
      // The store holds the last record that landed.
      assert.deepEqual((await readLease(inner))?.lease, landed.at(-1));
    }
  });
});

/**
 * A store that tells its own time like S3 does (Last-Modified and Date, whole seconds), from
 * a clock of its own (`nowMs`), whatever the clocks of the hosts that use it say.
 */
class ClockedStore extends MemStore {
  nowMs = Date.parse('2026-12-05T10:00:00.250Z');
  private readonly modified = new Map<string, number>();
  private readonly second = (ms: number): number => Math.floor(ms / 1000) * 1000;

  override async put(key: string, body: PutBody, options: PutOptions = {}) {
    const r = await super.put(key, body, options);
    this.modified.set(key, this.nowMs);
    return r;
  }

  override async get(key: string, options: GetOptions = {}) {
    const r = await super.get(key, options);
    const modifiedMs = this.second(this.modified.get(key) ?? 0);
    return { ...r, storeClock: { modifiedMs, nowMs: this.second(this.nowMs) } };
  }
}

describe('leases across clocks that disagree', () => {
  const realNow = Date.now.bind(Date);
  /** Run `fn` on a host whose clock is `ms` off. */
  const onClock = async <T>(ms: number, fn: () => Promise<T>): Promise<T> => {
    Date.now = () => realNow() + ms;
    try {
      return await fn();
    } finally {
      Date.now = realNow;
    }
  };
  const MIN = 60_000;

  it("with the store's clock: a live lease holds whoever's clock is off, and expires by the store's time", async () => {
    for (const [holderSkew, takerSkew] of [
      [-20 * MIN, 0],
      [0, 20 * MIN],
      [20 * MIN, -20 * MIN],
    ] as const) {
      const store = new ClockedStore();
      const a = await onClock(holderSkew, () => Lease.acquire(store, opts('a', { ttlMs: 30_000 })));
      a.stop();
      // 25 s later by the store: still held, whatever the taker's clock says.
      store.nowMs += 25_000;
      await onClock(takerSkew, () =>
        assert.rejects(Lease.acquire(store, opts('b')), (e) => {
          assert.ok(isHyperError(e, 'LEASE_HELD'), String(e));
          // The expiry is shown on the taker's clock: about 5 s (plus the store's rounding)
          // from its now.
          const left = Date.parse(/expires (\S+)\)/.exec(e.message)?.[1] ?? '') - Date.now();
          assert.ok(left > 4_000 && left < 7_000, `expires in ${left} ms`);
          return true;
        }),
      );
      const stat = await onClock(takerSkew, () => readLease(store));
      assert.equal(stat?.live, true);
      // Past its TTL (and the store's whole seconds) by the store's clock: free without --force.
      store.nowMs += 7_000;
      const b = await onClock(takerSkew, () => Lease.acquire(store, opts('b')));
      assert.equal(b.epoch, a.epoch + 1);
      assert.equal(b.previousDone, false, 'an expired holder is fenced');
      b.stop();
    }
  });

  it('a lease given back is free at once; a record without a TTL (an older hyper) is judged by its expiry', async () => {
    const store = new ClockedStore();
    const a = await Lease.acquire(store, opts('a'));
    await a.release(false);
    assert.equal(decodeLease((await store.get(LEASE_KEY)).body).ttlMs, 0);
    const b = await Lease.acquire(store, opts('b'));
    assert.equal(b.previousDone, false, 'given back with a PUT maybe in flight: fenced');
    await b.release();
    const c = await Lease.acquire(store, opts('c'));
    assert.equal(c.previousDone, true);
    c.stop();

    // Written by a hyper that did not record TTLs: the holder's expiry against this clock.
    const old: LeaseRecord = { holder: 'old', epoch: 9, acquiredMs: 0, expiresMs: realNow() + MIN };
    const { etag } = await store.get(LEASE_KEY);
    await store.put(LEASE_KEY, encodeLease(old), { ifMatch: etag });
    store.nowMs += 10 * MIN; // the store's clock does not matter for it
    assert.equal((await readLease(store))?.live, true);
    await assert.rejects(Lease.acquire(store, opts('d')), (e) => isHyperError(e, 'LEASE_HELD'));
    const d = await onClock(2 * MIN, () => Lease.acquire(store, opts('d')));
    assert.equal(d.epoch, 10);
    d.stop();
  });

  it("without a store clock (file://, mem://) expiry is the holder's, against this clock", async () => {
    const store = MemStore.isolated();
    const a = await onClock(-20 * MIN, () => Lease.acquire(store, opts('a', { ttlMs: 30_000 })));
    a.stop();
    // The holder's clock is 20 minutes behind: its lease looks long expired here.
    const b = await Lease.acquire(store, opts('b'));
    assert.equal(b.epoch, a.epoch + 1);
    b.stop();
  });

  it('the TTL is an optional field at the end: records without it keep their old bytes', () => {
    const l: LeaseRecord = { holder: 'h', epoch: 3, acquiredMs: 5, expiresMs: 7 };
    const bytes = encodeLease(l);
    assert.equal(bytes.length, 16 + 2 + 1 + 24);
    assert.deepEqual(decodeLease(bytes), l);
    const withTtl = encodeLease({ ...l, ttlMs: 30_000 });
    assert.equal(withTtl.length, bytes.length + 4);
    assert.deepEqual(decodeLease(withTtl), { ...l, ttlMs: 30_000 });
    // A reader that knows only the first fields finds them where they always were.
    assert.deepEqual(withTtl.subarray(12, 12 + 27), bytes.subarray(12, 12 + 27));
  });
});
