import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { decodeSegmentHeader } from '../../../../src/format/codec/segment.js';
import { HEAD_KEY, segmentKey } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { ObjectStore, PutOptions } from '../../../../src/format/store/types.js';
import { repairHead } from '../../../../src/format/volume/repair.js';
import { MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rng } from '../../../helpers/rng.js';

const BS = 4096;
const SPAN = 64 * BS;

/** `rounds` flushes of random blocks; the first SPAN bytes after each, and each checkpoint. */
async function build(
  mem: MemStore,
  rand: () => number,
  rounds: number,
): Promise<{ checkpoints: number[]; contents: Buffer[] }> {
  await Volume.create(mem, { size: 16 * MiB });
  const v = await Volume.open(mem, { flushIntervalMs: 0 });
  const model = Buffer.alloc(SPAN);
  const checkpoints: number[] = [];
  const contents: Buffer[] = [];
  for (let r = 0; r < rounds; r++) {
    const n = 1 + Math.floor(rand() * 6);
    for (let i = 0; i < n; i++) {
      const lba = Math.floor(rand() * (SPAN / BS));
      const blk = Buffer.alloc(BS, 1 + Math.floor(rand() * 255));
      await v.write(lba * BS, blk);
      blk.copy(model, lba * BS);
    }
    checkpoints.push((await v.flush()).checkpoint);
    contents.push(Buffer.from(model));
  }
  await v.close();
  return { checkpoints, contents };
}

/** Flip a byte of the first data block stored in segment `id`. */
async function damageSegment(mem: MemStore, id: number): Promise<void> {
  const body = Buffer.from((await mem.get(segmentKey(id))).body);
  const h = decodeSegmentHeader(body);
  body.writeUInt8((body[h.dataOffset + 7] as number) ^ 0xff, h.dataOffset + 7);
  await mem.put(segmentKey(id), body);
}

async function readSpan(mem: MemStore): Promise<Buffer> {
  const v = await Volume.open(mem, { readOnly: true });
  try {
    return await v.read(0, SPAN);
  } finally {
    await v.close();
  }
}

describe('file repair (library)', () => {
  it('seeded: rebuilds the head of the newest undamaged checkpoint, whatever the damage', async () => {
    for (let seed = 1; seed <= 12; seed++) {
      const rand = rng(seed);
      const mem = MemStore.isolated();
      const rounds = 2 + Math.floor(rand() * 4);
      const { checkpoints, contents } = await build(mem, rand, rounds);
      const original = (await mem.get(HEAD_KEY)).body;
      // Damage the newest `d` checkpoints' segments (never all), then the head.
      const d = Math.floor(rand() * rounds);
      for (let k = 0; k < d; k++) await damageSegment(mem, checkpoints[rounds - 1 - k] as number);
      if (rand() < 0.5) await mem.put(HEAD_KEY, Buffer.from('garbage head'));
      else await mem.delete([HEAD_KEY]);
      const want = checkpoints[rounds - 1 - d] as number;

      const dry = await repairHead(mem);
      assert.equal(dry.applied, false, `seed ${seed}`);
      assert.equal(dry.checkpoint, want, `seed ${seed}`);
      assert.equal(dry.skipped.length, d, `seed ${seed}`);
      const r = await repairHead(mem, { apply: true });
      assert.equal(r.applied, true);
      assert.equal(r.checkpoint, want, `seed ${seed}`);
      if (d === 0) assert.ok((await mem.get(HEAD_KEY)).body.equals(original), `seed ${seed}`);
      assert.ok((await readSpan(mem)).equals(contents[rounds - 1 - d] as Buffer), `seed ${seed}`);
      assert.equal((await repairHead(mem)).head, 'intact');
    }
  });

  it('never overwrites a head a writer put there meanwhile (CAS / create-only)', async () => {
    for (const damage of ['garbage', 'missing'] as const) {
      const mem = MemStore.isolated();
      await build(mem, rng(7), 3);
      const good = (await mem.get(HEAD_KEY)).body;
      if (damage === 'garbage') await mem.put(HEAD_KEY, Buffer.from('garbage head'));
      else await mem.delete([HEAD_KEY]);
      // Another writer commits a head between the repair's read and its write.
      const racing: ObjectStore = Object.create(mem) as ObjectStore;
      racing.put = async (key: string, body: Buffer, o?: PutOptions) => {
        if (key === HEAD_KEY) await mem.put(HEAD_KEY, good);
        return mem.put(key, body, o);
      };
      await assert.rejects(repairHead(racing, { apply: true }), (e: unknown) =>
        isHyperError(e, 'PRECONDITION_FAILED'),
      );
      assert.ok((await mem.get(HEAD_KEY)).body.equals(good));
    }
  });

  it('refuses with LEASE_HELD under a live lease unless forced; an empty prefix is VOLUME_NOT_FOUND', async () => {
    const mem = MemStore.isolated();
    await build(mem, rng(3), 2);
    const v = await Volume.open(mem, { flushIntervalMs: 0 });
    try {
      await mem.delete([HEAD_KEY]);
      await assert.rejects(repairHead(mem, { apply: true }), (e: unknown) =>
        isHyperError(e, 'LEASE_HELD'),
      );
      assert.equal((await repairHead(mem)).head, 'missing', 'a dry run is allowed');
      assert.equal((await repairHead(mem, { apply: true, force: true })).applied, true);
    } finally {
      await v.close().catch(() => undefined);
    }
    await assert.rejects(repairHead(MemStore.isolated()), (e: unknown) =>
      isHyperError(e, 'VOLUME_NOT_FOUND'),
    );
  });
});
