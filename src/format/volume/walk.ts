/**
 * Walking a checkpoint's index to learn what it references: the segments it reaches and,
 * for the live (current) checkpoint, how many bytes of each segment it uses and which
 * blocks and nodes live where. Used by compaction and clone flattening.
 */
import { leafLength } from '../codec/node.js';
import { Miss, type Node } from '../index/btree.js';
import type { NodeLoader } from '../index/loader.js';
import type { HeadRecord } from '../codec/head.js';
import { isHashKey, prefixOfKey } from '../codec/dedup.js';
import { dedupRootOf, rootOf } from './heads.js';
import type { Volume } from './volume.js';

export interface Reach {
  segments: Set<number>;
  /** Current checkpoint only: live bytes per segment, and what lives there. */
  live: Map<number, number>;
  blocks: Map<number, number[]>;
  /** For each segment, the first lba of every leaf stored in it (touching it rewrites the node). */
  nodeLbas: Map<number, number[]>;
  /**
   * Deduplicating volumes, current checkpoint: per segment, the hash prefixes of the content
   * index's entries pointing there, and one index key under each of its nodes stored there.
   */
  dedupKeys: Map<number, number[]>;
  dedupNodeKeys: Map<number, number[]>;
}

export function newReach(): Reach {
  return {
    segments: new Set(),
    live: new Map(),
    blocks: new Map(),
    nodeLbas: new Map(),
    dedupKeys: new Map(),
    dedupNodeKeys: new Map(),
  };
}

/**
 * Walk one checkpoint's index; `visited` holds node locations already walked (shared
 * subtrees are walked once). With `live`, also record per segment the bytes the checkpoint
 * references there, its blocks, and for each index node stored there one mapped block under
 * it (rewriting that block makes the node be rewritten too).
 */
export interface WalkOptions {
  /** Node locations already walked (shared subtrees are walked once across calls). */
  visited?: Set<string>;
  /** The current checkpoint: also record live bytes, blocks and nodes per segment. */
  live?: boolean;
  /**
   * The tree is a deduplicating volume's content index (codec/dedup.ts): its pointers reach
   * segments, but only the block index makes bytes live (a block only the content index
   * still names is garbage: compaction drops the entry and the block with it).
   */
  content?: boolean;
  /** Blocks may be shared by several lbas (deduplicating volumes): count each place once. */
  shared?: boolean;
  signal?: AbortSignal;
}

/**
 * Walk a checkpoint: its block index and, on deduplicating volumes, its content index (whose
 * pointers keep segments reachable too).
 */
export async function walk(
  loader: NodeLoader,
  head: HeadRecord,
  r: Reach,
  options: Omit<WalkOptions, 'content' | 'shared'> = {},
): Promise<void> {
  const visited = options.visited ?? new Set<string>();
  const content = dedupRootOf(head);
  await walkTree(loader, rootOf(head), r, { ...options, visited, shared: !!content });
  if (content) await walkTree(loader, content, r, { ...options, visited, content: true });
}

async function walkTree(
  loader: NodeLoader,
  root: Node,
  r: Reach,
  { visited = new Set(), live = false, content = false, shared = false, signal }: WalkOptions = {},
): Promise<void> {
  const seen = new Map<number, Set<number>>();
  /** Whether a block place is counted the first time (always, unless blocks are shared). */
  const firstTime = (seg: number, off: number): boolean => {
    if (!shared) return true;
    let m = seen.get(seg);
    if (!m) seen.set(seg, (m = new Set()));
    if (m.has(off)) return false;
    m.add(off);
    return true;
  };
  const push = (m: Map<number, number[]>, seg: number, lba: number): void => {
    const l = m.get(seg);
    if (l) l.push(lba);
    else m.set(seg, [lba]);
  };
  const add = (seg: number, bytes: number): void => {
    r.segments.add(seg);
    if (live) r.live.set(seg, (r.live.get(seg) ?? 0) + bytes);
  };
  /** Returns the first mapped block below `nd`, if walked. */
  const rec = async (nd: Node): Promise<number | undefined> => {
    signal?.throwIfAborted();
    if (nd.level === 0) {
      for (let i = 0; i < nd.length; i++) {
        const key = nd.key(i);
        if (content) {
          // Pointer entries only; each is followed by its hash entry.
          if (isHashKey(key)) continue;
          r.segments.add(nd.seg(i));
          if (live) push(r.dedupKeys, nd.seg(i), prefixOfKey(key));
          continue;
        }
        const seg = nd.seg(i);
        add(seg, firstTime(seg, nd.off(i)) ? leafLength(nd.entries, i) : 0);
        if (live) push(r.blocks, seg, key);
      }
      return nd.length > 0 ? nd.key(0) : undefined;
    }
    let first: number | undefined;
    for (let i = 0; i < nd.length; i++) {
      const seg = nd.seg(i);
      const off = nd.off(i);
      const key = `${seg}:${off}`;
      if (visited.has(key)) continue;
      visited.add(key);
      add(seg, loader.nodeSize);
      let child = loader.cached(seg, off);
      while (!child) {
        await loader.load(new Miss(nd, i));
        child = loader.cached(seg, off);
      }
      const f = await rec(child);
      if (live && f !== undefined) {
        if (content) push(r.dedupNodeKeys, seg, f);
        else push(r.nodeLbas, seg, f);
      }
      first ??= f;
    }
    return first;
  };
  await rec(root);
}

/**
 * Copy blocks to new locations by reading them and writing the same bytes back (in runs of
 * contiguous blocks). Rewriting one block under an index node makes the node be rewritten too.
 */
export async function rewriteBlocks(
  vol: Volume,
  lbaSet: Iterable<number>,
  signal?: AbortSignal,
  onProgress?: (done: number, total: number) => void,
  concurrency = 8,
): Promise<{ blocks: number; bytes: number }> {
  const bs = vol.info.dataBlockSize;
  const sorted = [...new Set(lbaSet)].sort((a, b) => a - b);
  // Runs of contiguous blocks (at most 256 each).
  const runs: [number, number][] = [];
  for (let i = 0; i < sorted.length;) {
    let j = i + 1;
    while (j < sorted.length && sorted[j] === (sorted[j - 1] as number) + 1 && j - i < 256) j++;
    runs.push([sorted[i] as number, j - i]);
    i = j;
  }
  let blocks = 0;
  let bytes = 0;
  let done = 0;
  let next = 0;
  // Several runs in flight: on an object store each read is a round trip. Runs are disjoint,
  // so their order does not matter. Beside a live writer's clients (online compaction), a
  // block changed after the copy began keeps its change: the copy skips it (Volume.rewrite).
  // Each run is watched for changes from before its read until its copy is in, so a copy
  // never arrives unwatched (ending one watch for all at the first failure let a read still
  // in flight copy its blocks over writes made since: chaos seed 58615), and what is
  // recorded is bounded by the runs in flight. After a failure the other workers finish the
  // read they are in and copy nothing more.
  let failed = false;
  const worker = async (): Promise<void> => {
    while (next < runs.length && !failed) {
      signal?.throwIfAborted();
      const [lo, count] = runs[next++] as [number, number];
      const len = Math.min(count * bs, vol.info.size - lo * bs);
      if (len <= 0) continue;
      const watch = vol.watchChanges(lo * bs, len);
      try {
        const data = await vol.read(lo * bs, len);
        if (failed) return;
        const copied = await vol.rewrite(lo * bs, data, watch);
        bytes += copied === count ? len : copied * bs;
        blocks += copied;
      } finally {
        vol.unwatchChanges(watch);
      }
      done += count;
      onProgress?.(done, sorted.length);
    }
  };
  const settled = await Promise.allSettled(
    Array.from({ length: Math.max(1, concurrency) }, () =>
      worker().catch((e: unknown) => {
        failed = true;
        throw e;
      }),
    ),
  );
  for (const r of settled) if (r.status === 'rejected') throw r.reason;
  await vol.flush();
  return { blocks, bytes };
}
