/**
 * The read path: blocks still in the write buffer are served from there; the rest are looked
 * up in the index and fetched from their segments, contiguous blocks of one segment with one
 * ranged GET, every block verified against the CRC32C in its index entry, through a bounded
 * cache of clean blocks. Also answers block status (extents of data and holes).
 */
import { dataError } from '../../errors.js';
import { crc32c } from '../codec/binary.js';
import { PENDING_SEG, type BlockPtr } from '../codec/node.js';
import type { BTree } from '../index/btree.js';
import { LruCache } from '../index/cache.js';
import type { NodeLoader } from '../index/loader.js';
import type { SegmentSource } from './segments.js';
import type { Extent } from './types.js';
import type { BufferedBlock } from './write-buffer.js';

/** Extents answers cover at most this many blocks per call (clients ask again for the rest). */
const MAX_EXTENT_BLOCKS = 1 << 20;

/** What the reader reads through: the engine's current index and write buffer. */
export interface ReadView {
  /** The index as of now (a restore replaces it). */
  tree(): BTree;
  /** The write buffer's word on a block. */
  buffered(lba: number): BufferedBlock;
}

/** A run of blocks stored back to back in one segment: one ranged GET. */
interface Run {
  seg: number;
  off: number;
  lbas: number[];
  ptrs: BlockPtr[];
}

export class Reader {
  readonly dataCache: LruCache<string, Buffer>;

  constructor(
    private readonly view: ReadView,
    private readonly loader: NodeLoader,
    private readonly segments: SegmentSource,
    private readonly bs: number,
    dataCacheBytes: number,
  ) {
    this.dataCache = new LruCache(dataCacheBytes);
  }

  /** Read [offset, offset+length) (the caller checked the range). */
  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    if (length === 0) return out;
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    for (;;) {
      const fromIndex: number[] = [];
      for (let lba = first; lba <= last; lba++) {
        const v = this.view.buffered(lba);
        if (v === undefined) fromIndex.push(lba);
        else copyBlock(out, offset, length, lba, bs, v);
      }
      if (fromIndex.length === 0) break;
      if (await this.readFromIndex(out, offset, length, fromIndex)) break;
      // An index entry was still being flushed: the buffer has it now; go again.
    }
    return out;
  }

  /** Fill `out` for blocks that are not buffered. Returns false to ask for a retry. */
  private async readFromIndex(
    out: Buffer,
    offset: number,
    length: number,
    lbas: number[],
  ): Promise<boolean> {
    const bs = this.bs;
    const tree = this.view.tree();
    const lo = lbas[0] as number;
    const hi = (lbas[lbas.length - 1] as number) + 1;
    const ptrs = new Map<number, BlockPtr>();
    if (lbas.length === 1) {
      const p = await this.loader.run(() => tree.lookup(lo));
      if (p) ptrs.set(lo, p);
    } else {
      for (const e of await this.loader.run(() => tree.scan(lo, hi))) ptrs.set(e.lba, e);
    }
    // Group contiguous blocks of one segment into runs: one ranged GET each.
    const runs: Run[] = [];
    let run: Run | undefined;
    for (const lba of lbas) {
      const p = ptrs.get(lba);
      if (!p) {
        copyBlock(out, offset, length, lba, bs, null);
        run = undefined;
        continue;
      }
      if (p.seg === PENDING_SEG) return false;
      const cached = this.dataCache.get(`${p.seg}:${p.off}`);
      if (cached) {
        copyBlock(out, offset, length, lba, bs, cached);
        run = undefined;
        continue;
      }
      const prev = run?.ptrs[run.ptrs.length - 1];
      const prevLba = run?.lbas[run.lbas.length - 1];
      if (
        run &&
        prev &&
        prev.seg === p.seg &&
        prev.off + prev.len === p.off &&
        prevLba === lba - 1
      ) {
        run.lbas.push(lba);
        run.ptrs.push(p);
      } else {
        run = { seg: p.seg, off: p.off, lbas: [lba], ptrs: [p] };
        runs.push(run);
      }
    }
    await Promise.all(
      runs.map(async (r) => {
        const blocks = await this.fetchRun(r);
        for (let k = 0; k < r.lbas.length; k++) {
          copyBlock(out, offset, length, r.lbas[k] as number, bs, blocks[k] as Buffer);
        }
      }),
    );
    return true;
  }

  /** GET a run of stored blocks, verify each checksum, cache them. */
  private async fetchRun({ seg, off, ptrs }: Run): Promise<Buffer[]> {
    const key = this.segments.keyFor(seg);
    const total = ptrs.reduce((s, p) => s + p.len, 0);
    const body = await this.segments.get(seg, { offset: off, length: total }, 'volume data');
    if (body.length < total)
      throw dataError(
        'CORRUPT_OBJECT',
        key,
        `Segment is truncated: blocks at ${off}+${total} not present`,
      );
    const out: Buffer[] = [];
    let at = 0;
    for (const p of ptrs) {
      const blk = body.subarray(at, at + p.len);
      if (p.codec !== 0) throw dataError('CORRUPT_OBJECT', key, `Unknown block codec ${p.codec}`);
      if (crc32c(blk) !== p.crc) {
        throw dataError(
          'CHECKSUM_MISMATCH',
          key,
          `Data block at offset ${off + at} failed its checksum`,
        );
      }
      const copy = ptrs.length === 1 ? blk : Buffer.from(blk);
      this.dataCache.set(`${seg}:${p.off}`, copy, copy.length);
      out.push(copy);
      at += p.len;
    }
    return out;
  }

  /** Runs of data and holes in [offset, offset+length) (the caller checked the range). */
  async extents(offset: number, length: number): Promise<Extent[]> {
    if (length === 0) return [];
    const bs = this.bs;
    const tree = this.view.tree();
    const lo = Math.floor(offset / bs);
    const hi = Math.min(Math.ceil((offset + length) / bs), lo + MAX_EXTENT_BLOCKS);
    const mapped = await this.loader.run(() => tree.scanKeys(lo, hi));
    const out: Extent[] = [];
    const end = Math.min(offset + length, hi * bs);
    let k = 0;
    for (let lba = lo; lba < hi; lba++) {
      while (k < mapped.length && (mapped[k] as number) < lba) k++;
      const d = this.view.buffered(lba);
      const hole = d === undefined ? mapped[k] !== lba : d === null;
      const a = Math.max(lba * bs, offset);
      const b = Math.min((lba + 1) * bs, end);
      const prev = out[out.length - 1];
      if (prev && prev.hole === hole) prev.length = b - prev.offset;
      else out.push({ offset: a, length: b - a, hole });
    }
    return out;
  }
}

/** Copy the part of block `lba` (or zeros for null) that overlaps [offset, offset+length) into out. */
function copyBlock(
  out: Buffer,
  offset: number,
  length: number,
  lba: number,
  bs: number,
  blk: Buffer | null,
): void {
  const bStart = lba * bs;
  const from = Math.max(offset, bStart);
  const to = Math.min(offset + length, bStart + bs);
  if (blk) blk.copy(out, from - offset, from - bStart, to - bStart);
  else out.fill(0, from - offset, to - offset);
}
