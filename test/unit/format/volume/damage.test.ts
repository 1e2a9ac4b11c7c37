/**
 * Damage to any object of a volume, at random (seeded): bits flipped, a range zeroed, the
 * object cut short, deleted, or replaced by another object of the same kind; and records
 * rewritten around nonsense with a valid checksum (what a broken or hostile writer could
 * leave: the head, snapshot records, the lease, a segment's header or one of its index nodes).
 * On each damaged copy of one healthy volume: open it and read every block, check it (deep),
 * list its snapshots and checkpoints, stat it, diff two checkpoints, repair it (dry run),
 * compact it and read every block again, open it for writing, write and flush. Must hold:
 *  (a) no operation fails as a bug (INTERNAL): it succeeds, or reports the damage as damage,
 *      naming the object;
 *  (b) a read that succeeds returns the bytes written, unless the damage forged a checksum,
 *      also after a compaction (which must not copy a damaged block under a fresh checksum);
 *  (c) a deep check that finds the volume clean means every block reads back as written
 *      (again unless a checksum was forged).
 * HYPER_DAMAGE_TRIALS sets the number of trials (default 100, seeds from
 * HYPER_DAMAGE_FIRST_SEED, default 1), HYPER_DAMAGE_SEED replays one,
 * HYPER_DAMAGE_KEEP_GOING=1 runs every trial and reports all that failed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { crc32c } from '../../../../src/format/codec/binary.js';
import { ENVELOPE_OVERHEAD, encodeEnvelope } from '../../../../src/format/codec/envelope.js';
import { NODE_HEADER, ENTRY_SIZE } from '../../../../src/format/codec/node.js';
import { LEASE_KEY } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { statVolume } from '../../../../src/format/volume/admin.js';
import {
  createSnapshot,
  diffCheckpoints,
  listCheckpoints,
  listSnapshots,
} from '../../../../src/format/volume/history.js';
import { repairHead } from '../../../../src/format/volume/repair.js';
import { addKey, clearKeys } from '../../../../src/format/keyring.js';
import { KiB, MiB, type CreateOptions } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rng } from '../../../helpers/rng.js';

const SIZE = 4 * MiB;
const BLOCK = 4 * KiB;

interface Healthy {
  objects: Map<string, Buffer>;
  content: Buffer;
}

const KEY = Buffer.alloc(32, 0x42);

/** Block codecs, encryption (blocks and index nodes sealed) and deduplication. */
const VARIANTS = {
  none: {},
  lz4: { compression: 'lz4' },
  zstd: { compression: 'zstd' },
  sealed: { compression: 'lz4', encryption: 'xchacha20-poly1305', key: KEY },
  dedup: { dedup: true },
} as const satisfies Record<string, CreateOptions>;
type Variant = keyof typeof VARIANTS;

/**
 * A volume with four checkpoints of scattered and sequential writes (an index with internal
 * nodes), a trimmed range, a snapshot, and its lease object.
 */
async function healthy(seed: number, variant: Variant): Promise<Healthy> {
  const r = rng(seed);
  const mem = MemStore.isolated();
  await Volume.create(mem, { size: SIZE, segmentSize: 1 * MiB, ...VARIANTS[variant] });
  const content = Buffer.alloc(SIZE);
  const v = await Volume.open(mem, { flushIntervalMs: 0 });
  for (let round = 0; round < 4; round++) {
    for (let i = 0; i < 300; i++) {
      const lba = Math.floor(r() * (SIZE / BLOCK));
      const data = Buffer.alloc(BLOCK, Math.floor(r() * 256));
      // Half of each block compressible, half not.
      for (let k = 0; k < BLOCK / 2; k++) data[k] = Math.floor(r() * 256);
      await v.write(lba * BLOCK, data);
      data.copy(content, lba * BLOCK);
    }
    const at = Math.floor(r() * (SIZE / BLOCK - 64)) * BLOCK;
    const run = Buffer.alloc(64 * BLOCK, round + 1);
    await v.write(at, run);
    run.copy(content, at);
    if (round === 2) {
      await v.trim(at, 8 * BLOCK);
      content.fill(0, at, at + 8 * BLOCK);
    }
    const cp = await v.flush();
    if (round === 1) await createSnapshot(mem, 'before', { checkpoint: cp.checkpoint });
  }
  // Leave the lease object behind, as a process that stopped without closing does.
  await v.abandon();
  const objects = new Map<string, Buffer>();
  for await (const page of mem.list(''))
    for (const o of page.objects) objects.set(o.key, (await mem.get(o.key)).body);
  assert.ok(objects.has(LEASE_KEY), 'the lease object is there to damage');
  return { objects, content };
}

/** A fresh store holding `objects`. */
async function storeOf(url: string, objects: Map<string, Buffer>): Promise<MemStore> {
  const store = new MemStore(url, new Map());
  for (const [k, b] of objects) await store.put(k, b);
  return store;
}

type Damage = 'flip' | 'zero' | 'cut' | 'delete' | 'swap' | 'forge-record' | 'forge-node';
const DAMAGES: Damage[] = ['flip', 'zero', 'cut', 'delete', 'swap', 'forge-record', 'forge-node'];

/** Nonsense with the shape of data: bits flipped, fields set to extremes, cut or extended. */
function scramble(r: () => number, body: Buffer): Buffer {
  let b = Buffer.from(body);
  const n = 1 + Math.floor(r() * 3);
  for (let k = 0; k < n; k++) {
    const how = r();
    if (b.length === 0 || how < 0.15) {
      b = Buffer.concat([
        b,
        Buffer.from(Array.from({ length: 1 + Math.floor(r() * 32) }, () => Math.floor(r() * 256))),
      ]);
    } else if (how < 0.3) {
      b = b.subarray(0, Math.floor(r() * b.length));
    } else if (how < 0.6) {
      const at = Math.floor(r() * b.length);
      b[at] = (b[at] as number) ^ (1 << Math.floor(r() * 8));
    } else {
      // A little-endian field of 1, 2, 4 or 8 bytes set to an extreme.
      const width = [1, 2, 4, 8][Math.floor(r() * 4)] as number;
      const at = Math.floor(r() * Math.max(1, b.length - width + 1));
      const v = [0x00, 0xff, 0x7f, 0x80, 0x01][Math.floor(r() * 5)] as number;
      for (let i = 0; i < width && at + i < b.length; i++)
        b[at + i] = i === width - 1 ? v : v === 0x01 ? 0 : v;
    }
  }
  return b;
}

/** Apply one damage to a copy of the healthy objects; says what it did and whether it forged. */
async function damage(
  r: () => number,
  objects: Map<string, Buffer>,
): Promise<{ store: MemStore; what: string; forged: boolean }> {
  const keys = [...objects.keys()].sort();
  const copy = new Map<string, Buffer>([...objects].map(([k, b]) => [k, Buffer.from(b)]));
  let kind = DAMAGES[Math.floor(r() * DAMAGES.length)] as Damage;
  let key = keys[Math.floor(r() * keys.length)] as string;
  const isSegment = (k: string) => k.startsWith('seg/');
  if (kind === 'forge-node' && !isSegment(key)) key = keys.find(isSegment) as string;
  let body = copy.get(key) as Buffer;
  let what = `${kind} ${key}`;
  switch (kind) {
    case 'flip': {
      const n = 1 + Math.floor(r() * 3);
      for (let k = 0; k < n && body.length > 0; k++) {
        const at = Math.floor(r() * body.length);
        body[at] = (body[at] as number) ^ (1 << Math.floor(r() * 8));
      }
      break;
    }
    case 'zero': {
      const at = Math.floor(r() * body.length);
      const len = Math.min(1 + Math.floor(r() * 8192), body.length - at);
      body.fill(0, at, at + len);
      what += ` [${at}, +${len})`;
      break;
    }
    case 'cut': {
      const to = Math.floor(r() * body.length);
      body = body.subarray(0, to);
      what += ` to ${to} bytes`;
      break;
    }
    case 'delete':
      copy.delete(key);
      break;
    case 'swap': {
      const prefix = key.slice(0, key.indexOf('/') + 1);
      const others = keys.filter((k) => k !== key && prefix !== '' && k.startsWith(prefix));
      const other = others[Math.floor(r() * others.length)];
      if (other === undefined) {
        kind = 'flip';
        body[0] = (body[0] as number) ^ 1;
        what = `flip ${key}`;
      } else {
        body = Buffer.from(objects.get(other) as Buffer);
        what += ` with ${other}`;
      }
      break;
    }
    case 'forge-record': {
      // The envelope at the start of the object (a segment's is its header).
      if (body.length < ENVELOPE_OVERHEAD) break;
      const length = Math.min(body.readUInt32LE(8), body.length);
      const forged = encodeEnvelope(
        body.toString('ascii', 0, 4),
        body.readUInt16LE(4),
        scramble(r, body.subarray(12, Math.max(12, length - 4))),
      );
      body = Buffer.concat([forged, body.subarray(length)]);
      break;
    }
    case 'forge-node': {
      const starts: number[] = [];
      for (let at = body.indexOf('HYND'); at >= 0; at = body.indexOf('HYND', at + 1))
        starts.push(at);
      const at = starts[Math.floor(r() * starts.length)];
      if (at === undefined) break;
      const count = body.readUInt16LE(at + 6);
      const region = body.subarray(at + 5, at + NODE_HEADER + count * ENTRY_SIZE);
      const scrambled = scramble(r, region);
      // Same size in place: the entries region keeps its length, fields get nonsense.
      scrambled.copy(region, 0, 0, Math.min(region.length, scrambled.length));
      const n = Math.min(
        body.readUInt16LE(at + 6),
        Math.floor((body.length - at - NODE_HEADER) / ENTRY_SIZE),
      );
      const crc = crc32c(
        body.subarray(at + NODE_HEADER, at + NODE_HEADER + n * ENTRY_SIZE),
        crc32c(body.subarray(at, at + 28)),
      );
      body.writeUInt32LE(crc, at + 28);
      what += ` at ${at}`;
      break;
    }
  }
  if (kind !== 'delete') copy.set(key, body);
  return { store: await storeOf('mem://damaged/', copy), what, forged: kind.startsWith('forge') };
}

class Violation extends Error {}

async function within<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Violation(`${what} did not end within 20 s`)), 20_000);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function trial(seed: number, base: Healthy): Promise<string> {
  const r = rng(seed);
  const { store, what, forged } = await damage(r, base.objects);
  const log: string[] = [what];
  /** (a) An error must be hyper's own, and not a bug. */
  const failed = (op: string, e: unknown): void => {
    if (e instanceof Violation) throw e;
    if (!isHyperError(e) || e.kind === 'internal') {
      throw new Violation(
        `(a) ${op} failed as a bug after ${what}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
      );
    }
    if (!isHyperError(e)) return;
    if (e.kind === 'data' && e.key === undefined)
      throw new Violation(`(a) ${op} reported damage without naming the object: ${e.message}`);
    log.push(`${op}: ${e.code} ${e.message}`);
  };
  /** Open read-only and read every block: true when all of it reads back as written. */
  const readAll = async (when: string): Promise<boolean> => {
    let readable = true;
    try {
      const v = await within('open', Volume.open(store, { readOnly: true }));
      try {
        for (let at = 0; at < SIZE; at += 256 * KiB) {
          let got: Buffer;
          try {
            got = await within('read', v.read(at, 256 * KiB));
          } catch (e) {
            readable = false;
            failed(`read @${at}${when}`, e);
            continue;
          }
          if (!got.equals(base.content.subarray(at, at + 256 * KiB))) {
            readable = false;
            if (!forged)
              throw new Violation(`(b) read @${at}${when} returned wrong bytes after ${what}`);
          }
        }
      } finally {
        await v.close();
      }
    } catch (e) {
      readable = false;
      failed(`open read-only${when}`, e);
    }
    return readable;
  };
  const attempt = async (op: string, run: () => Promise<unknown>): Promise<void> => {
    try {
      await within(op, run());
    } catch (e) {
      failed(op, e);
    }
  };
  const readable = await readAll('');
  try {
    const c = await within('check', checkVolume(store, { deep: true }));
    log.push(
      `check: ${c.clean ? 'clean' : c.problems.map((p) => `${p.kind} ${p.key}`).join(', ')}`,
    );
    if (c.clean && !readable && !forged)
      throw new Violation(`(c) check found ${what} clean, but the volume does not read back`);
  } catch (e) {
    failed('check', e);
  }
  await attempt('list snapshots', () => listSnapshots(store));
  await attempt('stat', () => statVolume(store, { space: true }));
  await attempt('list checkpoints', () => listCheckpoints(store));
  await attempt('diff', () => diffCheckpoints(store, { checkpoint: 2 }));
  await attempt('repair (dry run)', () => repairHead(store));
  // Compaction copies the blocks it keeps: a damaged one must stop it, never be copied
  // under a fresh checksum (the reads after it would then return wrong bytes).
  await attempt('compact', () =>
    compactVolume(store, { keepLast: 1, graceMs: 0, minLive: 0.95, holder: 'damage-test' }),
  );
  await readAll(' after compact');
  try {
    const v = await within(
      'open',
      Volume.open(store, { flushIntervalMs: 0, holder: 'damage-test' }),
    );
    try {
      await within('write', v.write(0, Buffer.alloc(BLOCK, 0x5a)));
      await within('flush', v.flush());
    } finally {
      await v.close().catch((e: unknown) => failed('close', e));
    }
  } catch (e) {
    failed('open, write and flush', e);
  }
  return log.join('\n  ');
}

/** Undamaged, the volume opens, reads back whole and checks clean (else nothing above means much). */
async function baseline(variant: Variant, base: Healthy): Promise<void> {
  const store = await storeOf('mem://healthy/', base.objects);
  const v = await Volume.open(store, { readOnly: true });
  assert.ok(
    (await v.read(0, SIZE)).equals(base.content),
    `${variant}: the healthy volume reads back`,
  );
  await v.close();
  const c = await checkVolume(store, { deep: true });
  assert.equal(c.clean, true, `${variant}: ${JSON.stringify(c.problems)}`);
  assert.deepEqual(
    c.problems.filter((p) => p.kind !== 'orphan'),
    [],
    `${variant}: the healthy volume checks clean`,
  );
}

describe('damaged volumes', () => {
  it('report damage as damage, never as a bug, and never return wrong bytes (seeded)', async (t) => {
    const one = process.env['HYPER_DAMAGE_SEED'];
    const trials = Number(process.env['HYPER_DAMAGE_TRIALS'] ?? 100);
    const first = Number(process.env['HYPER_DAMAGE_FIRST_SEED'] ?? 1);
    const seeds =
      one !== undefined ? [Number(one)] : Array.from({ length: trials }, (_, i) => first + i);
    const keepGoing = process.env['HYPER_DAMAGE_KEEP_GOING'] === '1';
    const failures: string[] = [];
    const bases = new Map<Variant, Healthy>();
    const variants = Object.keys(VARIANTS) as Variant[];
    addKey(KEY);
    t.after(clearKeys);
    for (const seed of seeds) {
      const codec = variants[seed % variants.length] as Variant;
      let base = bases.get(codec);
      if (base === undefined) {
        bases.set(codec, (base = await healthy(7, codec)));
        await baseline(codec, base);
      }
      try {
        const log = await trial(seed, base);
        if (process.env['HYPER_DAMAGE_VERBOSE']) console.log(`seed ${seed} (${codec}): ${log}`);
      } catch (e) {
        if (!(e instanceof Violation)) throw e;
        failures.push(`seed ${seed} (${codec}): ${e.message}`);
        if (!keepGoing) break;
      }
    }
    assert.deepEqual(failures, []);
  });
});
