/**
 * The copy-on-write B+tree that maps logical blocks to stored blocks.
 *
 * Every operation here is synchronous. When it needs a node that is not in memory it
 * returns a `Miss` (without having changed anything); the caller loads the node and calls
 * again (see `NodeLoader.run`). Because mutations never span an `await`, a reader never sees
 * a half-applied insert or split, and clean nodes — shared with the node cache and with
 * readers of older checkpoints — are never modified: a write clones the path to the leaf
 * ("dirty" nodes, owned by this tree until the next flush writes them into a segment).
 *
 * Separator rule: internal entry i covers lbas [key_i, key_{i+1}); key_i is ≤ every lba in
 * child i. The last child's range ends at the parent's own upper bound.
 */
import { ENTRY_SIZE, SECTOR } from '../codec/node.js';
import { readU64, writeU64 } from '../codec/binary.js';

export class Node {
  /** Dirty children of an internal node, by entry index (clean ones are found by pointer). */
  kids: (Node | undefined)[] | undefined;
  /** Offset assigned while a flush encodes this node (bytes into the new segment). */
  newOff = 0;

  constructor(
    public level: number,
    public n: number,
    public e: Buffer,
    public dirty: boolean,
  ) {
    this.kids = level > 0 && dirty ? [] : undefined;
  }

  key(i: number): number {
    return readU64(this.e, i * ENTRY_SIZE);
  }
  seg(i: number): number {
    return readU64(this.e, i * ENTRY_SIZE + 8);
  }
  /** Offset in bytes (stored in 512-byte units). */
  off(i: number): number {
    return this.e.readUInt32LE(i * ENTRY_SIZE + 16) * SECTOR;
  }
  /** Internal: mapped blocks below entry i. */
  count(i: number): number {
    return readU64(this.e, i * ENTRY_SIZE + 24);
  }
  /** Mapped blocks in this subtree. */
  total(): number {
    if (this.level === 0) return this.n;
    let t = 0;
    for (let i = 0; i < this.n; i++) t += this.count(i);
    return t;
  }
  /** Index of the last entry with key ≤ lba, or -1. */
  lastLE(lba: number): number {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.key(mid) <= lba) lo = mid + 1;
      else hi = mid;
    }
    return lo - 1;
  }
  /** Index of the first entry with key ≥ lba. */
  lowerBound(lba: number): number {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.key(mid) < lba) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** A leaf value: where one logical block is stored. `seg` 0 means "in the flush being built". */
export interface BlockPtr {
  seg: number;
  /** Byte offset in the segment object. */
  off: number;
  len: number;
  crc: number;
  codec: number;
}

export interface ScanEntry extends BlockPtr {
  lba: number;
}

/** A node the operation needs that is not in memory: child `index` of `parent`. */
export class Miss {
  constructor(
    readonly parent: Node,
    readonly index: number,
  ) {}
}

export interface NodeSource {
  /** A clean node by location, if it is in memory. */
  cached(seg: number, off: number): Node | undefined;
}

export const PENDING_SEG = 0;

export function newEntries(capacity: number): Buffer {
  return Buffer.alloc((capacity + 1) * ENTRY_SIZE);
}

export class BTree {
  constructor(
    public root: Node,
    readonly capacity: number,
    private readonly source: NodeSource,
  ) {}

  static empty(capacity: number, source: NodeSource): BTree {
    return new BTree(new Node(0, 0, newEntries(capacity), true), capacity, source);
  }

  /** Mapped blocks in the whole tree. */
  get mapped(): number {
    return this.root.total();
  }

  child(parent: Node, i: number): Node | Miss {
    const k = parent.kids?.[i];
    if (k) return k;
    return this.source.cached(parent.seg(i), parent.off(i)) ?? new Miss(parent, i);
  }

  // ---------------------------------------------------------------- reads

  lookup(lba: number): BlockPtr | undefined | Miss {
    let nd = this.root;
    while (nd.level > 0) {
      const i = nd.lastLE(lba);
      if (i < 0) return undefined;
      const c = this.child(nd, i);
      if (c instanceof Miss) return c;
      nd = c;
    }
    const i = nd.lowerBound(lba);
    if (i >= nd.n || nd.key(i) !== lba) return undefined;
    return readPtr(nd, i);
  }

  /** Every mapped block with lo ≤ lba < hi, ascending. */
  scan(lo: number, hi: number): ScanEntry[] | Miss {
    const out: ScanEntry[] = [];
    const miss = this.scanRec(this.root, lo, hi, out);
    return miss ?? out;
  }

  private scanRec(nd: Node, lo: number, hi: number, out: ScanEntry[]): Miss | undefined {
    if (nd.level === 0) {
      for (let i = nd.lowerBound(lo); i < nd.n; i++) {
        const lba = nd.key(i);
        if (lba >= hi) break;
        const p = readPtr(nd, i) as ScanEntry;
        p.lba = lba;
        out.push(p);
      }
      return undefined;
    }
    for (let i = Math.max(0, nd.lastLE(lo)); i < nd.n && nd.key(i) < hi; i++) {
      if (nd.count(i) === 0) continue;
      const c = this.child(nd, i);
      if (c instanceof Miss) return c;
      const m = this.scanRec(c, lo, hi, out);
      if (m) return m;
    }
    return undefined;
  }

  /** Mapped blocks with lo ≤ lba < hi, loading only the two boundary paths. */
  countRange(lo: number, hi: number): number | Miss {
    return this.countRec(this.root, lo, hi, 0, Number.MAX_SAFE_INTEGER);
  }

  private countRec(nd: Node, lo: number, hi: number, lower: number, upper: number): number | Miss {
    if (lo <= lower && upper <= hi) return nd.total();
    if (nd.level === 0) {
      let c = 0;
      for (let i = nd.lowerBound(lo); i < nd.n && nd.key(i) < hi; i++) c++;
      return c;
    }
    let total = 0;
    for (let i = Math.max(0, nd.lastLE(lo)); i < nd.n && nd.key(i) < hi; i++) {
      const a = Math.max(nd.key(i), lower);
      const b = i + 1 < nd.n ? nd.key(i + 1) : upper;
      if (b <= lo) continue;
      if (lo <= a && b <= hi) {
        total += nd.count(i);
        continue;
      }
      if (nd.count(i) === 0) continue;
      const c = this.child(nd, i);
      if (c instanceof Miss) return c;
      const r = this.countRec(c, lo, hi, a, b);
      if (r instanceof Miss) return r;
      total += r;
    }
    return total;
  }

  // ---------------------------------------------------------------- writes

  /** Map `lba` to `p`. Returns 1 if the block was unmapped before, 0 if replaced. */
  insert(lba: number, p: BlockPtr): number | Miss {
    // Find the whole path before changing anything.
    const path: Node[] = [];
    const idx: number[] = [];
    let nd = this.root;
    while (nd.level > 0) {
      const i = Math.max(0, nd.lastLE(lba));
      const c = this.child(nd, i);
      if (c instanceof Miss) return c;
      path.push(nd);
      idx.push(i);
      nd = c;
    }
    path.push(nd);
    this.makeWritable(path, idx);
    const leaf = path[path.length - 1] as Node;
    const pos = leaf.lowerBound(lba);
    let delta = 0;
    if (pos < leaf.n && leaf.key(pos) === lba) {
      writePtr(leaf, pos, lba, p);
    } else {
      leaf.e.copyWithin((pos + 1) * ENTRY_SIZE, pos * ENTRY_SIZE, leaf.n * ENTRY_SIZE);
      writePtr(leaf, pos, lba, p);
      leaf.n++;
      delta = 1;
    }
    for (let d = path.length - 2; d >= 0; d--) {
      const parent = path[d] as Node;
      const i = idx[d] as number;
      if (delta) addCount(parent, i, delta);
      if (lba < parent.key(i)) writeU64(parent.e, i * ENTRY_SIZE, lba);
    }
    if (leaf.n > this.capacity) this.splitUp(path, idx, pos === leaf.n - 1);
    return delta;
  }

  /** Unmap every block with lo ≤ lba < hi. Returns how many were mapped. */
  deleteRange(lo: number, hi: number): number | Miss {
    if (hi <= lo) return 0;
    const n = this.countRange(lo, hi);
    if (n instanceof Miss || n === 0) return n;
    // Every partially covered node lies on the path of lo or of hi-1; countRange loaded both.
    if (!this.root.dirty) this.root = cloneNode(this.root, this.capacity);
    const removed = this.delRec(this.root, lo, hi, 0, Number.MAX_SAFE_INTEGER);
    // Shrink the root while it has a single child that is in memory.
    for (;;) {
      const r = this.root;
      if (r.level > 0 && r.n === 0) {
        this.root = new Node(0, 0, newEntries(this.capacity), true);
      } else if (r.level > 0 && r.n === 1) {
        const c = this.child(r, 0);
        if (c instanceof Miss) break;
        this.root = c.dirty ? c : cloneNode(c, this.capacity);
      } else break;
    }
    return removed;
  }

  private delRec(nd: Node, lo: number, hi: number, lower: number, upper: number): number {
    if (nd.level === 0) {
      const a = nd.lowerBound(lo);
      let b = a;
      while (b < nd.n && nd.key(b) < hi) b++;
      if (b > a) {
        nd.e.copyWithin(a * ENTRY_SIZE, b * ENTRY_SIZE, nd.n * ENTRY_SIZE);
        nd.n -= b - a;
      }
      return b - a;
    }
    let removed = 0;
    let i = Math.max(0, nd.lastLE(lo));
    while (i < nd.n && nd.key(i) < hi) {
      const a = Math.max(nd.key(i), lower);
      const b = i + 1 < nd.n ? nd.key(i + 1) : upper;
      if (b <= lo) {
        i++;
        continue;
      }
      if (lo <= a && b <= hi) {
        removed += nd.count(i);
        removeEntry(nd, i);
        continue;
      }
      const cnt = nd.count(i);
      if (cnt === 0) {
        i++;
        continue;
      }
      const c = this.child(nd, i);
      if (c instanceof Miss) throw new Error('btree: boundary node not loaded');
      const w = c.dirty ? c : cloneNode(c, this.capacity);
      (nd.kids as (Node | undefined)[])[i] = w;
      const r = this.delRec(w, lo, hi, a, b);
      removed += r;
      addCount(nd, i, -r);
      if (w.n === 0) {
        removeEntry(nd, i);
        continue;
      }
      i++;
    }
    return removed;
  }

  /** Clone every clean node on the path (root first) and link the clones. */
  private makeWritable(path: Node[], idx: number[]): void {
    if (!this.root.dirty) {
      this.root = cloneNode(this.root, this.capacity);
    }
    path[0] = this.root;
    for (let d = 1; d < path.length; d++) {
      const nd = path[d] as Node;
      if (nd.dirty) continue;
      const w = cloneNode(nd, this.capacity);
      const parent = path[d - 1] as Node;
      (parent.kids as (Node | undefined)[])[idx[d - 1] as number] = w;
      path[d] = w;
    }
  }

  /** Split overflowing nodes from the bottom of `path` upwards. */
  private splitUp(path: Node[], idx: number[], append: boolean): void {
    for (let d = path.length - 1; d >= 0; d--) {
      const nd = path[d] as Node;
      if (nd.n <= this.capacity) return;
      // Appends keep the left node full (sequential writes pack nodes densely).
      const at = append ? this.capacity : nd.n >>> 1;
      const right = new Node(nd.level, nd.n - at, newEntries(this.capacity), true);
      nd.e.copy(right.e, 0, at * ENTRY_SIZE, nd.n * ENTRY_SIZE);
      if (nd.level > 0) {
        const kids = nd.kids as (Node | undefined)[];
        right.kids = kids.slice(at, nd.n);
        kids.length = at;
      }
      nd.n = at;
      if (d === 0) {
        const root = new Node(nd.level + 1, 2, newEntries(this.capacity), true);
        writeChild(root, 0, nd.key(0), nd.total());
        writeChild(root, 1, right.key(0), right.total());
        root.kids = [nd, right];
        this.root = root;
        return;
      }
      const parent = path[d - 1] as Node;
      const i = idx[d - 1] as number;
      const kids = parent.kids as (Node | undefined)[];
      if (kids.length < i + 1) kids.length = i + 1;
      parent.e.copyWithin((i + 2) * ENTRY_SIZE, (i + 1) * ENTRY_SIZE, parent.n * ENTRY_SIZE);
      kids.splice(i + 1, 0, right);
      parent.n++;
      writeChild(parent, i, parent.key(i), nd.total());
      writeChild(parent, i + 1, right.key(0), right.total());
    }
  }

  /**
   * Dirty nodes below the root in the order a flush writes them: level by level from the
   * leaves up (children before parents), left to right within a level, so that siblings
   * sit next to each other in the segment and one ranged GET can load a run of them.
   */
  dirtyNodes(): Node[] {
    const byLevel: Node[][] = [];
    const walk = (nd: Node): void => {
      if (!nd.kids) return;
      for (let i = 0; i < nd.n; i++) {
        const k = nd.kids[i];
        if (k) {
          (byLevel[k.level] ??= []).push(k);
          walk(k);
        }
      }
    };
    walk(this.root);
    return byLevel.flat();
  }

  /** Logical block numbers mapped in [lo, hi), ascending (no pointer decoding). */
  scanKeys(lo: number, hi: number): number[] | Miss {
    const out: number[] = [];
    const rec = (nd: Node): Miss | undefined => {
      if (nd.level === 0) {
        for (let i = nd.lowerBound(lo); i < nd.n; i++) {
          const lba = nd.key(i);
          if (lba >= hi) break;
          out.push(lba);
        }
        return undefined;
      }
      for (let i = Math.max(0, nd.lastLE(lo)); i < nd.n && nd.key(i) < hi; i++) {
        if (nd.count(i) === 0) continue;
        const c = this.child(nd, i);
        if (c instanceof Miss) return c;
        const m = rec(c);
        if (m) return m;
      }
      return undefined;
    };
    return rec(this.root) ?? out;
  }
}

export function readPtr(nd: Node, i: number): BlockPtr {
  const o = i * ENTRY_SIZE;
  return {
    seg: readU64(nd.e, o + 8),
    off: nd.e.readUInt32LE(o + 16) * SECTOR,
    len: nd.e.readUInt32LE(o + 20),
    crc: nd.e.readUInt32LE(o + 24),
    codec: nd.e.readUInt16LE(o + 28),
  };
}

export function writePtr(nd: Node, i: number, lba: number, p: BlockPtr): void {
  const o = i * ENTRY_SIZE;
  writeU64(nd.e, o, lba);
  writeU64(nd.e, o + 8, p.seg);
  nd.e.writeUInt32LE(p.off / SECTOR, o + 16);
  nd.e.writeUInt32LE(p.len, o + 20);
  nd.e.writeUInt32LE(p.crc >>> 0, o + 24);
  nd.e.writeUInt16LE(p.codec, o + 28);
  nd.e.writeUInt16LE(0, o + 30);
}

/** Internal entry for a dirty child (its location is filled in when a flush writes it). */
function writeChild(nd: Node, i: number, key: number, count: number): void {
  const o = i * ENTRY_SIZE;
  writeU64(nd.e, o, key);
  writeU64(nd.e, o + 8, 0);
  nd.e.writeUInt32LE(0, o + 16);
  nd.e.writeUInt32LE(0, o + 20);
  writeU64(nd.e, o + 24, count);
}

function addCount(nd: Node, i: number, delta: number): void {
  writeU64(nd.e, i * ENTRY_SIZE + 24, nd.count(i) + delta);
}

function removeEntry(nd: Node, i: number): void {
  nd.e.copyWithin(i * ENTRY_SIZE, (i + 1) * ENTRY_SIZE, nd.n * ENTRY_SIZE);
  nd.kids?.splice(i, 1);
  nd.n--;
}

export function cloneNode(nd: Node, capacity: number): Node {
  const e = newEntries(capacity);
  nd.e.copy(e, 0, 0, nd.n * ENTRY_SIZE);
  const c = new Node(nd.level, nd.n, e, true);
  if (nd.level > 0) c.kids = nd.kids ? nd.kids.slice() : [];
  return c;
}
