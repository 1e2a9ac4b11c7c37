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
import {
  ENTRY_SIZE,
  childBlocks,
  entryKey,
  entryOffset,
  entryWords,
  leafOffset,
  entrySegment,
  readLeaf,
  setChildBlocks,
  setEntryKey,
  wordsKey,
  writeChild,
  writeLeaf,
  type BlockPtr,
} from '../codec/node.js';

export { PENDING_SEG, type BlockPtr } from '../codec/node.js';

export class Node {
  /** Dirty children of an internal node, by entry index (clean ones are found by location). */
  children: (Node | undefined)[] | undefined;
  /** `entries` as 32-bit words (the same memory), when they can be read so. */
  private readonly words: Uint32Array | undefined;

  constructor(
    public level: number,
    /** Entries in use. */
    public length: number,
    /** The raw 32-byte entries (codec/node.ts), with room for one more than the capacity. */
    public readonly entries: Buffer,
    /** Owned by this tree until the next flush writes it (clean nodes are shared and never modified). */
    public dirty: boolean,
    /**
     * A node of a content-hash index (codec/dedup.ts), not of a block index: its children are
     * decoded as such (codec/node.ts decodeNode).
     */
    readonly content = false,
  ) {
    this.children = level > 0 && dirty ? [] : undefined;
    this.words = entryWords(entries);
  }

  key(i: number): number {
    const w = this.words;
    return w ? wordsKey(w, i) : entryKey(this.entries, i);
  }
  seg(i: number): number {
    return entrySegment(this.entries, i);
  }
  /** Offset in bytes of the entry's target in its segment. */
  off(i: number): number {
    return this.level === 0 ? leafOffset(this.entries, i) : entryOffset(this.entries, i);
  }
  /** Internal nodes: mapped blocks below entry i. */
  blocksBelow(i: number): number {
    return childBlocks(this.entries, i);
  }
  /** Mapped blocks in this subtree. */
  total(): number {
    if (this.level === 0) return this.length;
    let t = 0;
    for (let i = 0; i < this.length; i++) t += this.blocksBelow(i);
    return t;
  }
  /** Index of the last entry with key ≤ lba, or -1. */
  lastLE(lba: number): number {
    let lo = 0;
    let hi = this.length;
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
    let hi = this.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.key(mid) < lba) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
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

export function newEntries(capacity: number): Buffer {
  return Buffer.alloc((capacity + 1) * ENTRY_SIZE);
}

export class BTree {
  constructor(
    public root: Node,
    readonly capacity: number,
    private readonly source: NodeSource,
  ) {}

  /** An empty tree (`content`: of a content-hash index). */
  static empty(capacity: number, source: NodeSource, content = false): BTree {
    return new BTree(new Node(0, 0, newEntries(capacity), true, content), capacity, source);
  }

  /** Mapped blocks in the whole tree. */
  get mapped(): number {
    return this.root.total();
  }

  child(parent: Node, i: number): Node | Miss {
    const k = parent.children?.[i];
    if (k) return k;
    return this.source.cached(parent.seg(i), parent.off(i)) ?? new Miss(parent, i);
  }

  // ---------------------------------------------------------------- reads

  lookup(lba: number): BlockPtr | undefined | Miss {
    const f = this.find(lba);
    return f instanceof Miss || !f ? f : readLeaf(f[0].entries, f[1]);
  }

  /** The leaf and entry index holding `key`. */
  private find(key: number): [Node, number] | undefined | Miss {
    let nd = this.root;
    while (nd.level > 0) {
      const i = nd.lastLE(key);
      if (i < 0) return undefined;
      const c = this.child(nd, i);
      if (c instanceof Miss) return c;
      nd = c;
    }
    const i = nd.lowerBound(key);
    if (i >= nd.length || nd.key(i) !== key) return undefined;
    return [nd, i];
  }

  /** Every mapped block with lo ≤ lba < hi, ascending. */
  scan(lo: number, hi: number): ScanEntry[] | Miss {
    const out: ScanEntry[] = [];
    const miss = this.visit(lo, hi, (lba, entries, i) => {
      const p = readLeaf(entries, i) as ScanEntry;
      p.lba = lba;
      out.push(p);
    });
    return miss ?? out;
  }

  /**
   * Call `leaf` for every mapped block with lo ≤ lba < hi, ascending, with the leaf entries
   * that hold it and its index there (read them with the codec's accessors, at once: a dirty
   * leaf changes in place). No object per block. Returns the first node not in memory
   * (blocks before it were visited: the caller starts over once it is loaded).
   */
  visit(
    lo: number,
    hi: number,
    leaf: (lba: number, entries: Buffer, i: number) => void,
  ): Miss | undefined {
    return this.visitRec(this.root, lo, hi, leaf);
  }

  private visitRec(
    nd: Node,
    lo: number,
    hi: number,
    leaf: (lba: number, entries: Buffer, i: number) => void,
  ): Miss | undefined {
    if (nd.level === 0) {
      for (let i = nd.lowerBound(lo); i < nd.length; i++) {
        const lba = nd.key(i);
        if (lba >= hi) break;
        leaf(lba, nd.entries, i);
      }
      return undefined;
    }
    for (let i = Math.max(0, nd.lastLE(lo)); i < nd.length && nd.key(i) < hi; i++) {
      if (nd.blocksBelow(i) === 0) continue;
      const c = this.child(nd, i);
      if (c instanceof Miss) return c;
      const m = this.visitRec(c, lo, hi, leaf);
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
      for (let i = nd.lowerBound(lo); i < nd.length && nd.key(i) < hi; i++) c++;
      return c;
    }
    let total = 0;
    for (let i = Math.max(0, nd.lastLE(lo)); i < nd.length && nd.key(i) < hi; i++) {
      const a = Math.max(nd.key(i), lower);
      const b = i + 1 < nd.length ? nd.key(i + 1) : upper;
      if (b <= lo) continue;
      if (lo <= a && b <= hi) {
        total += nd.blocksBelow(i);
        continue;
      }
      if (nd.blocksBelow(i) === 0) continue;
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
    return this.put(lba, p, undefined);
  }

  /**
   * The raw 32-byte leaf entry under `key` (a view into the node: copy before any change to
   * the tree), for trees whose leaves are not block pointers (the dedup index).
   */
  lookupEntry(key: number): Buffer | undefined | Miss {
    const f = this.find(key);
    if (f instanceof Miss || !f) return f;
    return f[0].entries.subarray(f[1] * ENTRY_SIZE, (f[1] + 1) * ENTRY_SIZE);
  }

  /**
   * The node an insert of `key` would miss, if any (its whole path is otherwise in memory):
   * a caller that must change several keys at once makes sure none of them can miss first.
   */
  reach(key: number): Miss | undefined {
    let nd = this.root;
    while (nd.level > 0) {
      const c = this.child(nd, Math.max(0, nd.lastLE(key)));
      if (c instanceof Miss) return c;
      nd = c;
    }
    return undefined;
  }

  /** Set the leaf entry under `key` to `entry` (32 bytes starting with the key). */
  putEntry(key: number, entry: Buffer): number | Miss {
    return this.put(key, undefined, entry);
  }

  /**
   * The path of the insert in progress, its first `depth` places (kept from one insert to
   * the next, never shortened: a flush inserts every block of a segment, and two arrays per
   * insert were most of its garbage).
   */
  private readonly path: Node[] = [];
  private readonly idx: number[] = [];

  /** Insert or replace the leaf entry under `lba`: pointer `p`, or the raw `entry`. */
  private put(lba: number, p: BlockPtr | undefined, entry: Buffer | undefined): number | Miss {
    // Find the whole path before changing anything.
    const path = this.path;
    const idx = this.idx;
    let depth = 0;
    let nd = this.root;
    while (nd.level > 0) {
      const i = Math.max(0, nd.lastLE(lba));
      const c = this.child(nd, i);
      if (c instanceof Miss) {
        path.fill(undefined as unknown as Node, 0, depth);
        return c;
      }
      path[depth] = nd;
      idx[depth++] = i;
      nd = c;
    }
    path[depth++] = nd;
    this.makeWritable(path, idx, depth);
    const leaf = path[depth - 1] as Node;
    const pos = leaf.lowerBound(lba);
    let delta = 0;
    if (pos >= leaf.length || leaf.key(pos) !== lba) {
      leaf.entries.copyWithin((pos + 1) * ENTRY_SIZE, pos * ENTRY_SIZE, leaf.length * ENTRY_SIZE);
      leaf.length++;
      delta = 1;
    }
    if (p) writeLeaf(leaf.entries, pos, lba, p);
    else (entry as Buffer).copy(leaf.entries, pos * ENTRY_SIZE, 0, ENTRY_SIZE);
    for (let d = depth - 2; d >= 0; d--) {
      const parent = path[d] as Node;
      const i = idx[d] as number;
      if (delta) addBlocks(parent, i, delta);
      if (lba < parent.key(i)) setEntryKey(parent.entries, i, lba);
    }
    if (leaf.length > this.capacity) this.splitUp(path, idx, depth, pos === leaf.length - 1);
    // (No node stays reachable from here once the insert is done.)
    path.fill(undefined as unknown as Node, 0, depth);
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
      if (r.level > 0 && r.length === 0) {
        this.root = new Node(0, 0, newEntries(this.capacity), true, r.content);
      } else if (r.level > 0 && r.length === 1) {
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
      while (b < nd.length && nd.key(b) < hi) b++;
      if (b > a) {
        nd.entries.copyWithin(a * ENTRY_SIZE, b * ENTRY_SIZE, nd.length * ENTRY_SIZE);
        nd.length -= b - a;
      }
      return b - a;
    }
    let removed = 0;
    let i = Math.max(0, nd.lastLE(lo));
    while (i < nd.length && nd.key(i) < hi) {
      const a = Math.max(nd.key(i), lower);
      const b = i + 1 < nd.length ? nd.key(i + 1) : upper;
      if (b <= lo) {
        i++;
        continue;
      }
      if (lo <= a && b <= hi) {
        removed += nd.blocksBelow(i);
        removeEntry(nd, i);
        continue;
      }
      const cnt = nd.blocksBelow(i);
      if (cnt === 0) {
        i++;
        continue;
      }
      const c = this.child(nd, i);
      if (c instanceof Miss) throw new Error('btree: boundary node not loaded');
      const w = c.dirty ? c : cloneNode(c, this.capacity);
      (nd.children as (Node | undefined)[])[i] = w;
      const r = this.delRec(w, lo, hi, a, b);
      removed += r;
      addBlocks(nd, i, -r);
      if (w.length === 0) {
        removeEntry(nd, i);
        continue;
      }
      i++;
    }
    return removed;
  }

  /** Clone every clean node on the path (root first) and link the clones. */
  private makeWritable(path: Node[], idx: number[], depth: number): void {
    if (!this.root.dirty) {
      this.root = cloneNode(this.root, this.capacity);
    }
    path[0] = this.root;
    for (let d = 1; d < depth; d++) {
      const nd = path[d] as Node;
      if (nd.dirty) continue;
      const w = cloneNode(nd, this.capacity);
      const parent = path[d - 1] as Node;
      (parent.children as (Node | undefined)[])[idx[d - 1] as number] = w;
      path[d] = w;
    }
  }

  /** Split overflowing nodes from the bottom of `path` (its first `depth` places) upwards. */
  private splitUp(path: Node[], idx: number[], depth: number, append: boolean): void {
    for (let d = depth - 1; d >= 0; d--) {
      const nd = path[d] as Node;
      if (nd.length <= this.capacity) return;
      // Appends keep the left node full (sequential writes pack nodes densely).
      const at = append ? this.capacity : nd.length >>> 1;
      const right = new Node(nd.level, nd.length - at, newEntries(this.capacity), true, nd.content);
      nd.entries.copy(right.entries, 0, at * ENTRY_SIZE, nd.length * ENTRY_SIZE);
      if (nd.level > 0) {
        const children = nd.children as (Node | undefined)[];
        right.children = children.slice(at, nd.length);
        children.length = at;
      }
      nd.length = at;
      if (d === 0) {
        const root = new Node(nd.level + 1, 2, newEntries(this.capacity), true, nd.content);
        writeChild(root.entries, 0, nd.key(0), nd.total());
        writeChild(root.entries, 1, right.key(0), right.total());
        root.children = [nd, right];
        this.root = root;
        return;
      }
      const parent = path[d - 1] as Node;
      const i = idx[d - 1] as number;
      const children = parent.children as (Node | undefined)[];
      if (children.length < i + 1) children.length = i + 1;
      parent.entries.copyWithin(
        (i + 2) * ENTRY_SIZE,
        (i + 1) * ENTRY_SIZE,
        parent.length * ENTRY_SIZE,
      );
      children.splice(i + 1, 0, right);
      parent.length++;
      writeChild(parent.entries, i, parent.key(i), nd.total());
      writeChild(parent.entries, i + 1, right.key(0), right.total());
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
      if (!nd.children) return;
      for (let i = 0; i < nd.length; i++) {
        const k = nd.children[i];
        if (k) {
          (byLevel[k.level] ??= []).push(k);
          walk(k);
        }
      }
    };
    walk(this.root);
    return byLevel.flat();
  }

  /**
   * The mapped blocks in [lo, hi) as runs, ascending and merged: [a0, b0, a1, b1, ...] with
   * lo ≤ a < b ≤ hi. A subtree whose count of mapped blocks equals the width of its range is
   * all mapped and is not descended into, so a densely written range costs a few nodes of the
   * path to it, not every leaf (block status of a written volume loads no leaves).
   */
  mappedRuns(lo: number, hi: number): number[] | Miss {
    const out: number[] = [];
    const emit = (a: number, b: number): void => {
      const n = out.length;
      if (n > 0 && out[n - 1] === a) out[n - 1] = b;
      else out.push(a, b);
    };
    const rec = (nd: Node, lower: number, upper: number): Miss | undefined => {
      if (nd.level === 0) {
        for (let i = nd.lowerBound(lo); i < nd.length; i++) {
          const lba = nd.key(i);
          if (lba >= hi) break;
          emit(lba, lba + 1);
        }
        return undefined;
      }
      for (let i = Math.max(0, nd.lastLE(lo)); i < nd.length && nd.key(i) < hi; i++) {
        const below = nd.blocksBelow(i);
        if (below === 0) continue;
        // Every lba of child i lies in [a, b) (the separator rule, within the parent's bounds).
        const a = Math.max(nd.key(i), lower);
        const b = i + 1 < nd.length ? Math.min(nd.key(i + 1), upper) : upper;
        if (b <= lo) continue;
        if (below === b - a) {
          emit(Math.max(a, lo), Math.min(b, hi));
          continue;
        }
        const c = this.child(nd, i);
        if (c instanceof Miss) return c;
        const m = rec(c, a, b);
        if (m) return m;
      }
      return undefined;
    };
    return rec(this.root, 0, Number.MAX_SAFE_INTEGER) ?? out;
  }
}

function addBlocks(nd: Node, i: number, delta: number): void {
  setChildBlocks(nd.entries, i, nd.blocksBelow(i) + delta);
}

function removeEntry(nd: Node, i: number): void {
  nd.entries.copyWithin(i * ENTRY_SIZE, (i + 1) * ENTRY_SIZE, nd.length * ENTRY_SIZE);
  nd.children?.splice(i, 1);
  nd.length--;
}

export function cloneNode(nd: Node, capacity: number): Node {
  const e = newEntries(capacity);
  nd.entries.copy(e, 0, 0, nd.length * ENTRY_SIZE);
  const c = new Node(nd.level, nd.length, e, true, nd.content);
  if (nd.level > 0) c.children = nd.children ? nd.children.slice() : [];
  return c;
}
