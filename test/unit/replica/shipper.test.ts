/**
 * The replica volume in a worker thread (src/replica/shipper.ts), on a file:// store: what it
 * is sent lands in order and is committed by flush; back-pressure holds; errors come back with
 * their codes; a killed worker writes nothing more; and a replicator shipping through it keeps
 * the replica equal to the primary across a kill -9 and restart.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { isHyperError } from '../../../src/errors.js';
import { openStore, type ObjectStore } from '../../../src/format/store/index.js';
import { createVolume } from '../../../src/format/volume/create.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { formatPrimary, openPrimary, openReplicaStore } from '../../../src/replica/admin.js';
import { PrimaryFile } from '../../../src/replica/primary.js';
import { Replicator } from '../../../src/replica/replicator.js';
import { WorkerTarget } from '../../../src/replica/shipper.js';
import { silentLogger } from '../../../src/format/volume/types.js';
import { rng } from '../../helpers/rng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;

const dir = await mkdtemp(join(tmpdir(), 'hyper-shipper-'));
after(() => rm(dir, { recursive: true, force: true }));

let n = 0;
async function volumeUrl(): Promise<string> {
  const d = join(dir, `v${++n}`);
  await mkdir(d, { recursive: true });
  const url = `file://${d}`;
  await createVolume(await openStore(url), { size: SIZE, compression: 'lz4' });
  return url;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function content(url: string, at?: number): Promise<Buffer> {
  const v = await Volume.open(
    await openStore(url),
    at === undefined ? { readOnly: true } : { at: { checkpoint: at } },
  );
  try {
    return await v.read(0, SIZE);
  } finally {
    await v.close();
  }
}

const spec = (url: string, holder = 'shipper-test', force = false) => ({
  url,
  storeOptions: {},
  holder,
  force,
});

describe('replica shipper worker', () => {
  it('applies writes and zeroes in order; flush commits them; back-pressure holds', async () => {
    const url = await volumeUrl();
    // A window of 64 KiB: writers wait for the worker all the time.
    const t = await WorkerTarget.open(spec(url), silentLogger, 64 * KiB);
    const model = Buffer.alloc(SIZE);
    const r = rng(7);
    const checkpoints: { checkpoint: number; sha: string }[] = [];
    for (let i = 0; i < 600; i++) {
      const offset = Math.floor(r() * (SIZE / 512)) * 512;
      // Up to 48 KiB: writes over half the window take a batch of their own.
      const length = Math.min(SIZE - offset, (1 + Math.floor(r() * 96)) * 512);
      if (r() < 0.85) {
        const data = Buffer.alloc(length, (i % 250) + 1);
        data.writeUInt32LE(i, 0);
        await t.write(offset, data);
        // The caller may reuse its buffer at once: the shipper copied it.
        data.fill(0xee);
        model.fill((i % 250) + 1, offset, offset + length);
        model.writeUInt32LE(i, offset);
      } else {
        await t.writeZeroes(offset, length);
        model.fill(0, offset, offset + length);
      }
      if (i % 150 === 149) {
        const info = await t.flush();
        assert.equal(t.info.checkpoint, info.checkpoint);
        checkpoints.push({ checkpoint: info.checkpoint, sha: sha(model) });
      }
    }
    await t.close();
    assert.equal(checkpoints.length, 4);
    for (const c of checkpoints) assert.equal(sha(await content(url, c.checkpoint)), c.sha);
  });

  it('tryWrite takes a write only when the ring has room now, and never ahead of a waiting one', async () => {
    const url = await volumeUrl();
    const window = 64 * KiB;
    const t = await WorkerTarget.open(spec(url), silentLogger, window);
    const model = Buffer.alloc(SIZE);
    const fill = (i: number, length: number): Buffer => {
      const b = Buffer.alloc(length, (i % 250) + 1);
      b.writeUInt32LE(i, 0);
      return b;
    };
    const apply = (i: number, offset: number, length: number): void => {
      model.fill((i % 250) + 1, offset, offset + length);
      model.writeUInt32LE(i, offset);
    };
    // Half the window twice fills the ring before the worker can report anything: the next
    // write waits, and a tryWrite behind it (room or not) is refused.
    assert.equal(t.tryWrite(0, fill(0, window / 2)), true);
    apply(0, 0, window / 2);
    assert.equal(t.tryWrite(0, fill(1, window / 2)), true);
    apply(1, 0, window / 2);
    assert.equal(t.heldBytes, window);
    const waiting = t.write(0, fill(2, 4 * KiB));
    apply(2, 0, 4 * KiB);
    assert.equal(t.tryWrite(0, fill(3, 4 * KiB)), false);
    // The moment the worker reports the ring applied, before the waiting write has resumed:
    // there is room now, and still the tryWrite is refused. (A listener after the target's
    // own runs in that moment.)
    const worker = (t as unknown as { worker: Worker }).worker;
    let atReport: boolean | undefined;
    const onReport = (m: { t: string }): void => {
      if (m.t === 'applied') atReport ??= t.tryWrite(0, fill(3, 4 * KiB));
    };
    worker.on('message', onReport);
    await waiting;
    worker.off('message', onReport);
    assert.equal(atReport, false);

    // Then a seeded run on 64 overlapping 4 KiB slots (an overtaking write would show in the
    // bytes), used as the replicator's ship loop uses it: a tryWrite first, and when refused,
    // a write() that the next tryWrites must not overtake while it waits for room.
    const r = rng(11);
    let pending: Promise<void> = Promise.resolve();
    let taken = 0;
    let refused = 0;
    for (let i = 4; i < 1500; i++) {
      const offset = Math.floor(r() * 64) * 4 * KiB;
      const length = (1 + Math.floor(r() * 6)) * 4 * KiB;
      const data = fill(i, length);
      apply(i, offset, length);
      if (t.tryWrite(offset, data)) {
        taken++;
        // Taken is copied: the caller may reuse its buffer at once.
        data.fill(0xee);
      } else {
        refused++;
        await pending;
        pending = t.write(offset, data);
      }
      if (r() < 0.1) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    await pending;
    const info = await t.flush();
    await t.close();
    assert.equal(sha(await content(url, info.checkpoint)), sha(model));
    assert.ok(taken > 50 && refused > 50, `taken ${taken}, refused ${refused}`);
  });
  it('holds the lease, reports open failures with their codes, and writes nothing after a kill', async () => {
    const url = await volumeUrl();
    await assert.rejects(WorkerTarget.open(spec(join(dir, 'nothing-here')), silentLogger), (e) => {
      assert.ok(isHyperError(e));
      assert.equal(e.kind, 'invalid');
      return true;
    });
    await assert.rejects(
      WorkerTarget.open(spec(`file://${join(dir, 'none')}`), silentLogger),
      (e) => isHyperError(e) && e.kind === 'not-found',
    );
    const t = await WorkerTarget.open(spec(url, 'holder-a'), silentLogger);
    await assert.rejects(
      Volume.open(await openStore(url), { holder: 'holder-b' }),
      (e) => isHyperError(e) && e.code === 'LEASE_HELD',
    );
    await t.write(0, Buffer.alloc(64 * KiB, 1));
    const first = await t.flush();
    await t.write(0, Buffer.alloc(64 * KiB, 2));
    await t.kill();
    await assert.rejects(t.write(0, Buffer.alloc(4096, 3)), (e) => isHyperError(e));
    await assert.rejects(t.flush(), (e) => isHyperError(e));
    // Another writer takes over (as after kill -9): the last checkpoint is the flushed one,
    // and the new writer's fence (an empty checkpoint) follows it.
    const b = await Volume.open(await openStore(url), { holder: 'holder-b', force: true });
    assert.equal(b.headRecord.prevCheckpoint, first.checkpoint);
    assert.equal(b.info.checkpoint, first.checkpoint + 1);
    assert.ok((await b.read(0, 64 * KiB)).equals(Buffer.alloc(64 * KiB, 1)));
    await b.close();
  });

  it('a replicator shipping through the worker keeps the replica equal across a kill -9', async () => {
    const file = join(dir, 'primary.img');
    const prefix = `file://${join(dir, 'replicas')}/`;
    const opener = async (u: string, o?: { mkdir?: boolean }): Promise<ObjectStore> => {
      if (o?.mkdir && u.startsWith('file://')) await mkdir(u.slice(7), { recursive: true });
      return openStore(u);
    };
    const { uuid } = await formatPrimary({
      file,
      deviceSize: SIZE,
      replicaPrefix: prefix,
      regionSize: 256 * KiB,
      openStore: opener,
    });
    const start = async (holder: string, force: boolean): Promise<Replicator> => {
      const { primary, header } = await openPrimary(file, uuid, { force });
      const { store } = await openReplicaStore(header.replicaUrl, uuid, opener);
      const rep = new Replicator({
        primary,
        header,
        replicaStore: store,
        owner: holder,
        openReplica: () => WorkerTarget.open(spec(store.url, holder, true), silentLogger),
        openReplicaAt: (checkpoint) => Volume.open(store, { at: { checkpoint } }),
        commitIntervalMs: 20,
        clearDelayMs: 0,
        retryMs: 20,
      });
      await rep.start();
      return rep;
    };
    const model = Buffer.alloc(SIZE);
    const r = rng(11);
    const ops = async (rep: Replicator, count: number, seed: number): Promise<void> => {
      for (let i = 0; i < count; i++) {
        // Every third write is gathered (NBD writev) and large: its buffer is recycled once
        // the worker has copied it, so a later write reusing it too early would show.
        const gathered = i % 3 === 0;
        const offset = Math.floor(r() * (SIZE / 4096)) * 4096;
        const blocks = gathered ? 16 + Math.floor(r() * 48) : 1 + Math.floor(r() * 16);
        const length = Math.min(SIZE - offset, blocks * 4096);
        const data = Buffer.alloc(length, ((seed + i) % 250) + 1);
        data.writeUInt32LE(seed * 100_000 + i, 0);
        if (gathered) {
          const cut = Math.floor(length / 3);
          await rep.writeParts(offset, [data.subarray(0, cut), data.subarray(cut)]);
        } else await rep.write(offset, data);
        data.copy(model, offset);
        if (i % 40 === 39) await rep.flush();
      }
    };
    let rep = await start('ship-a', false);
    await ops(rep, 300, 1);
    assert.ok(await rep.settle(20_000), JSON.stringify(rep.status()));
    await ops(rep, 200, 2);
    // kill -9: the worker dies with it, nothing is drained or written to the header.
    await rep.crash();
    rep = await start('ship-b', true);
    assert.notEqual(rep.mode, 'forward-full');
    await ops(rep, 100, 3);
    assert.ok(await rep.settle(20_000), JSON.stringify(rep.status()));
    await rep.close();
    const p = await PrimaryFile.open(file, { readOnly: true });
    const primary = await p.read(0, SIZE);
    await p.close();
    assert.equal(sha(primary), sha(model));
    const { store } = await openReplicaStore(prefix, uuid, opener);
    const v = await Volume.open(store, { readOnly: true });
    assert.equal(sha(await v.read(0, SIZE)), sha(model));
    await v.close();
  });
});
