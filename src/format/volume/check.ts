/**
 * `file check`: verify a volume against its checksums without modifying anything (like
 * `qemu-img check` or `fsck -n`). Reads the head, lease, snapshot and pin records, the
 * write-ahead log past the head (every record the next writer replays), the header of every
 * retained checkpoint's segment and every index node those checkpoints reach; with `deep`,
 * every data block too. Damage is reported per object key and the walk goes on.
 */
import { isHyperError } from '../../errors.js';
import { DecodeError, crc32c } from '../codec/binary.js';
import { isRetainedCheckpoint, type HeadRecord } from '../codec/head.js';
import { openStoredBlock, type BlockPlace, type Sealer } from '../codec/seal.js';
import { ENTRY_SIZE, readLeaf } from '../codec/node.js';
import { ContentHasher, hashMatches, hashPrefix, isHashKey, prefixOfKey } from '../codec/dedup.js';
import { decodeSegmentHeader, segmentHeaderLength } from '../codec/segment.js';
import { decodeSnapshot } from '../codec/snapshot.js';
import { Miss, type Node } from '../index/btree.js';
import { NodeLoader } from '../index/loader.js';
import {
  FLATTEN_KEY,
  PIN_PREFIX,
  SNAPSHOT_PREFIX,
  parsePinKey,
  parseSegmentKey,
  segmentKey,
} from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { readLease } from './lease.js';
import { SegmentSource, defaultOpenStore, type OpenStoreFn } from './segments.js';
import { cloneHolds } from './clone.js';
import { settledWalTail, type WalTail } from './wal.js';
import {
  currentHead,
  dedupRootOf,
  parentOf,
  readHead,
  rootOf,
  unfinishedFlatten,
} from './heads.js';
import { newReach, walk } from './walk.js';

export type ProblemKind =
  | 'missing'
  | 'corrupt'
  | 'dangling'
  | 'orphan'
  | 'uncommitted'
  | 'stale-pin'
  | 'unfinished-flatten';

export interface CheckProblem {
  kind: ProblemKind;
  key: string;
  message: string;
}

export interface CheckResult {
  url: string;
  /** No missing or corrupt objects (orphans and uncommitted segments are not damage). */
  clean: boolean;
  deep: boolean;
  checkpoint: number;
  checkpointsChecked: number;
  segments: number;
  nodesChecked: number;
  blocksChecked: number;
  bytesVerified: number;
  problems: CheckProblem[];
  /**
   * With damage: the newest retained checkpoint whose index reaches none of the damaged or
   * missing segments (a target for `hyper snapshot restore --to N`), or null if none does
   * (or the head itself is damaged). Null on a clean volume.
   */
  restoreCheckpoint: number | null;
  /**
   * Records of the write-ahead log past the head that no writer can replay (from the first
   * damaged or missing one on): `file repair --apply` drops them. 0 when the log is whole.
   */
  unreplayableWalRecords: number;
}

export interface CheckOptions {
  deep?: boolean;
  openStore?: OpenStoreFn;
  signal?: AbortSignal;
  onProgress?: (phase: 'headers' | 'index' | 'data', done: number, total?: number) => void;
}

const HEADER_PREFIX = 256 * 1024;

/** Checks of a volume whose history kept changing under them, before the last is reported. */
const CHECK_ATTEMPTS = 3;

/**
 * Check the volume at `store`. It may be in use meanwhile: a compaction (with a short grace
 * period) or a restore may drop checkpoints and delete their segments while the check reads
 * what its head retained. So a check that found objects missing reads the head again, and if
 * the volume's history changed under it (another epoch, other retained checkpoints), checks
 * again from the new head; after CHECK_ATTEMPTS, it reports what the last one found.
 */
export async function checkVolume(
  store: ObjectStore,
  options: CheckOptions = {},
): Promise<CheckResult> {
  for (let attempt = 1; ; attempt++) {
    const { result, head } = await checkOnce(store, options);
    if (attempt >= CHECK_ATTEMPTS || !result.problems.some((p) => p.kind === 'missing'))
      return result;
    // (A store that fails this look cannot tell a compaction from damage: its error, then.)
    const now = await currentHead(store);
    if (head === undefined || now === undefined || sameHistory(head, now)) return result;
  }
}

/** The write-ahead log past the head, as the next writer would replay it (wal.ts). */
async function checkWal(
  store: ObjectStore,
  head: HeadRecord,
  options: CheckOptions,
): Promise<WalTail> {
  if (head.walUrl === undefined) return { replayable: [], dropped: [] };
  const walStore = await (options.openStore ?? defaultOpenStore)(head.walUrl);
  try {
    return await settledWalTail(
      walStore,
      head,
      () => currentHead(store),
      CHECK_ATTEMPTS,
      options.signal,
    );
  } finally {
    await walStore.close().catch(() => undefined);
  }
}

/** Whether two heads retain the same checkpoints up to the older one's (same epoch). */
function sameHistory(a: HeadRecord, b: HeadRecord): boolean {
  const ha = a.history;
  const hb = b.history;
  return (
    a.epoch === b.epoch &&
    a.skipped.join() === b.skipped.join() &&
    ha?.floor === hb?.floor &&
    (ha?.kept.join() ?? '') === (hb?.kept.join() ?? '')
  );
}

async function checkOnce(
  store: ObjectStore,
  options: CheckOptions,
): Promise<{ result: CheckResult; head?: HeadRecord }> {
  const problems: CheckProblem[] = [];
  const problem = (kind: ProblemKind, key: string, message: string): void => {
    problems.push({ kind, key, message });
  };
  // The head: without it there is nothing more to check.
  let head: HeadRecord;
  try {
    head = (await readHead(store)).head;
  } catch (e) {
    if (isHyperError(e) && e.kind === 'data') {
      problem('corrupt', 'head', e.message);
      return {
        result: {
          url: store.url,
          clean: false,
          deep: !!options.deep,
          checkpoint: 0,
          checkpointsChecked: 0,
          segments: 0,
          nodesChecked: 0,
          blocksChecked: 0,
          bytesVerified: 0,
          problems,
          restoreCheckpoint: null,
          unreplayableWalRecords: 0,
        },
      };
    }
    throw e;
  }
  try {
    await readLease(store);
  } catch (e) {
    if (!(isHyperError(e) && e.kind === 'data')) throw e;
    problem('corrupt', 'lease', e.message);
  }
  const wal = await checkWal(store, head, options);
  if (wal.bad) {
    const n = wal.dropped.length;
    problem(
      wal.bad.kind,
      wal.bad.key,
      `${wal.bad.message}. No writer can open the volume until the log is cut there: \`hyper file repair --apply\` drops ${n} record${n === 1 ? '' : 's'} (${wal.dropped[0]}–${wal.dropped[n - 1]}) and their writes`,
    );
  }

  // Objects present.
  const segs = new Map<number, number>();
  const records: string[] = [];
  let flattenRecord = false;
  for await (const page of store.list('')) {
    for (const o of page.objects) {
      const id = parseSegmentKey(o.key);
      if (id !== undefined) segs.set(id, o.size);
      else if (o.key.startsWith(SNAPSHOT_PREFIX) || o.key.startsWith(PIN_PREFIX))
        records.push(o.key);
      else if (o.key === FLATTEN_KEY) flattenRecord = true;
    }
  }
  // Not damage: a step left to do, which compaction and an unpin of the pin wait for.
  if (flattenRecord) {
    try {
      const before = await unfinishedFlatten(store, head);
      if (before)
        problem(
          'unfinished-flatten',
          FLATTEN_KEY,
          `A flatten stopped after it dropped the link to ${parentOf(before)?.url ?? 'the parent'} and before it made sure nothing reads through the checkpoints it dropped: finish it with \`hyper snapshot flatten ${store.url}\` (until then compaction of this volume and the release of its pin wait)`,
        );
    } catch (e) {
      if (!(isHyperError(e) && e.kind === 'data')) throw e;
      problem('corrupt', FLATTEN_KEY, e.message);
    }
  }
  for (const key of records) {
    try {
      const r = decodeSnapshot((await store.get(key)).body);
      const uuid = parsePinKey(key);
      if (!isRetainedCheckpoint(head, r.checkpoint) || !segs.has(r.checkpoint)) {
        problem(
          'dangling',
          key,
          `${key} names checkpoint ${r.checkpoint}, which is not a retained checkpoint`,
        );
      } else if (
        uuid !== undefined &&
        (await cloneHolds(r.note, uuid, options.openStore ?? defaultOpenStore)) === undefined
      ) {
        // Not damage: it only keeps the checkpoint longer than anything needs it.
        problem(
          'stale-pin',
          key,
          `${key} keeps checkpoint ${r.checkpoint} for the clone ${r.note}, which no longer exists (release it with \`hyper snapshot unpin ${store.url} ${r.note}\`)`,
        );
      }
    } catch (e) {
      if (e instanceof DecodeError) problem('corrupt', key, `${key} is damaged: ${e.message}`);
      else if (!isHyperError(e, 'OBJECT_NOT_FOUND')) throw e;
    }
  }

  // Retained checkpoints: their segment headers.
  const retained = [...segs.keys()]
    .filter((id) => isRetainedCheckpoint(head, id))
    .sort((a, b) => a - b);
  if (!segs.has(head.checkpoint))
    problem(
      'missing',
      segmentKey(head.checkpoint),
      `The current checkpoint's segment ${segmentKey(head.checkpoint)} is missing`,
    );
  const heads = new Map<number, HeadRecord>();
  let done = 0;
  for (const id of retained) {
    options.signal?.throwIfAborted();
    const key = segmentKey(id);
    try {
      const prefix = (await store.get(key, { range: { offset: 0, length: HEADER_PREFIX } })).body;
      const len = segmentHeaderLength(prefix);
      const buf =
        len <= prefix.length
          ? prefix
          : (await store.get(key, { range: { offset: 0, length: len } })).body;
      const h = decodeSegmentHeader(buf);
      if (h.segmentId !== id || h.head.checkpoint !== id)
        throw new DecodeError(`header names segment ${h.segmentId}`);
      if (h.totalLength !== segs.get(id))
        throw new DecodeError(`object is ${segs.get(id)} bytes, header says ${h.totalLength}`);
      // The current checkpoint's segment must be the one the head names (same time, same
      // index root): a segment deleted and written again under its id is another checkpoint.
      if (
        id === head.checkpoint &&
        (h.head.checkpointMs !== head.checkpointMs || !h.head.root.equals(head.root))
      ) {
        throw new DecodeError('it holds another checkpoint than the one the head names');
      }
      heads.set(id, id === head.checkpoint ? head : h.head);
    } catch (e) {
      if (e instanceof DecodeError)
        problem('corrupt', key, `Segment header of checkpoint ${id} is damaged: ${e.message}`);
      else if (isHyperError(e, 'OBJECT_NOT_FOUND'))
        problem('missing', key, `Segment of checkpoint ${id} is missing`);
      else throw e;
    }
    options.onProgress?.('headers', ++done, retained.length);
  }
  if (!heads.has(head.checkpoint)) heads.set(head.checkpoint, head);

  // Every index node the retained checkpoints reach (each shared node once).
  const source = await SegmentSource.forHead(store, head, options.openStore);
  const nodeSize = 2 ** head.metaBlockShift;
  const loader = new NodeLoader(source, nodeSize, 16 * 1024 * 1024);
  const reached = new Set<number>(heads.keys());
  const visited = new Set<string>();
  const blocks = new Map<number, Map<number, StoredEntry>>();
  let nodesChecked = 0;
  const reportedKeys = new Set<string>();
  /** `content`: the content index of a deduplicating volume (codec/dedup.ts). */
  const walkNode = async (nd: Node, content = false): Promise<void> => {
    options.signal?.throwIfAborted();
    if (nd.level === 0) {
      for (let i = 0; i < nd.length; i++) {
        const key = nd.key(i);
        // (Hash entries, at odd keys, point nowhere.)
        if (content && isHashKey(key)) continue;
        const seg = nd.seg(i);
        reached.add(seg);
        if (options.deep) {
          let m = blocks.get(seg);
          if (!m) blocks.set(seg, (m = new Map()));
          const off = nd.off(i);
          const { len, crc, codec } = readLeaf(nd.entries, i);
          const b = m.get(off) ?? { len, crc, codec, lba: content ? 0 : key, seg, off };
          // The content the index says is there, when its hash entry sits in the same leaf.
          if (content && i + 1 < nd.length && nd.key(i + 1) === key + 1) {
            const at = (i + 1) * ENTRY_SIZE;
            b.hash = {
              prefix: prefixOfKey(key),
              entry: Buffer.from(nd.entries.subarray(at, at + 32)),
            };
          }
          m.set(off, b);
        }
      }
      return;
    }
    for (let i = 0; i < nd.length; i++) {
      const seg = nd.seg(i);
      const off = nd.off(i);
      const id = `${seg}:${off}`;
      if (visited.has(id)) continue;
      visited.add(id);
      reached.add(seg);
      let child = loader.cached(seg, off);
      try {
        while (!child) {
          await loader.load(new Miss(nd, i));
          child = loader.cached(seg, off);
        }
      } catch (e) {
        if (!(isHyperError(e) && e.kind === 'data')) throw e;
        const key = e.key ?? source.keyFor(seg);
        if (!reportedKeys.has(`${key}|${e.code}`)) {
          reportedKeys.add(`${key}|${e.code}`);
          problem(e.code === 'MISSING_OBJECT' ? 'missing' : 'corrupt', key, e.message);
        }
        continue;
      }
      nodesChecked++;
      await walkNode(child, content);
    }
  };
  done = 0;
  for (const h of heads.values()) {
    try {
      await walkNode(rootOf(h));
      const content = dedupRootOf(h);
      if (content) await walkNode(content, true);
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      problem(
        'corrupt',
        segmentKey(h.checkpoint),
        `Index root of checkpoint ${h.checkpoint} is damaged: ${e.message}`,
      );
    }
    options.onProgress?.('index', ++done, heads.size);
  }

  // A clone reads blocks from its parents' segments: each of those must still exist (one
  // HEAD each; --deep also reads them).
  for (const seg of [...reached].sort((a, b) => a - b)) {
    if (!source.inherited(seg)) continue;
    const key = source.keyFor(seg);
    if (reportedKeys.has(`${key}|MISSING_OBJECT`)) continue;
    if (!(await source.exists(seg))) {
      reportedKeys.add(`${key}|MISSING_OBJECT`);
      problem('missing', key, `A parent volume's segment that this clone reads is missing`);
    }
  }

  // Data blocks (deep): one ranged GET per run of adjacent blocks.
  const bs = 2 ** head.dataBlockShift;
  const hasher = new ContentHasher(source.sealer?.dedupKey);
  let blocksChecked = 0;
  let bytesVerified = 0;
  if (options.deep) {
    let segDone = 0;
    for (const [seg, m] of blocks) {
      options.signal?.throwIfAborted();
      const key = source.keyFor(seg);
      const offs = [...m.keys()].sort((a, b) => a - b);
      let bad = 0;
      let mismatched = 0;
      let missing = false;
      for (let i = 0; i < offs.length && !missing;) {
        let j = i + 1;
        let end = (offs[i] as number) + (m.get(offs[i] as number)?.len ?? 0);
        while (j < offs.length && offs[j] === end && end - (offs[i] as number) < 8 * 1024 * 1024) {
          end += m.get(offs[j] as number)?.len ?? 0;
          j++;
        }
        const start = offs[i] as number;
        try {
          const body = await source.get(seg, { offset: start, length: end - start }, 'volume data');
          for (let k = i; k < j; k++) {
            const off = offs[k] as number;
            const b = m.get(off) as StoredEntry;
            const blk = body.subarray(off - start, off - start + b.len);
            blocksChecked++;
            bytesVerified += blk.length;
            if (blk.length !== b.len || crc32c(blk) !== b.crc) bad++;
            else if (b.codec !== 0 || b.hash) {
              // A sealed block must open (its tag), a compressed one decompress to its block,
              // and one the content index names must have that content.
              const plain = await decodes(blk, b, bs, source.sealer);
              if (!plain) bad++;
              else if (b.hash && !hashAgrees(hasher.hash(plain), b.hash)) {
                mismatched++;
                bad++;
              }
            }
          }
        } catch (e) {
          if (isHyperError(e, 'MISSING_OBJECT')) {
            if (!reportedKeys.has(`${key}|MISSING_OBJECT`)) problem('missing', key, e.message);
            missing = true;
          } else throw e;
        }
        i = j;
      }
      if (bad > 0)
        problem(
          'corrupt',
          key,
          mismatched > 0
            ? `${bad} data block(s) in ${key} fail their checksum, do not open or decompress, or (${mismatched} of them) hold other content than the dedup index says`
            : `${bad} data block(s) in ${key} fail their checksum (or do not open or decompress)`,
        );
      options.onProgress?.('data', ++segDone, blocks.size);
    }
  }
  // The newest checkpoint that reaches none of the damaged segments: walk each checkpoint's
  // index on its own, newest first (the nodes are cached from the walk above), until one
  // does not reach them.
  let restoreCheckpoint: number | null = null;
  const damaged = new Set<number>();
  for (const p of problems) {
    if (p.kind !== 'missing' && p.kind !== 'corrupt') continue;
    const id = parseSegmentKey(p.key);
    if (id !== undefined && !source.inherited(id)) damaged.add(id);
    else if (id === undefined) {
      // A parent's segment (a clone): find its id among the segments reached.
      for (const seg of reached) if (source.keyFor(seg) === p.key) damaged.add(seg);
    }
  }
  if (damaged.size > 0) {
    const ids = [...heads.keys()].sort((a, b) => b - a);
    for (const id of ids) {
      options.signal?.throwIfAborted();
      if (damaged.has(id)) continue;
      const reach = newReach();
      try {
        await walk(loader, heads.get(id) as HeadRecord, reach, {
          ...(options.signal ? { signal: options.signal } : {}),
        });
      } catch (e) {
        if (e instanceof DecodeError || (isHyperError(e) && e.kind === 'data')) continue;
        throw e;
      }
      if (![...reach.segments].some((seg) => damaged.has(seg))) {
        restoreCheckpoint = id;
        break;
      }
    }
  }
  await source.close();

  // Segments nothing retained reaches: garbage for compaction, not damage.
  const fences = new Set(head.fences);
  for (const id of segs.keys()) {
    // (A takeover's fence, and a leftover it skipped, stay for good: kept on purpose.)
    if (reached.has(id) || fences.has(id)) continue;
    const uncommitted = id > head.lastSegment || head.skipped.includes(id);
    problem(
      uncommitted ? 'uncommitted' : 'orphan',
      segmentKey(id),
      uncommitted
        ? `${segmentKey(id)} holds a flush that never committed (compaction removes it)`
        : `${segmentKey(id)} is not reached by any retained checkpoint (compaction removes it)`,
    );
  }
  const clean = !problems.some(
    (p) => p.kind === 'missing' || p.kind === 'corrupt' || p.kind === 'dangling',
  );
  return {
    result: {
      url: store.url,
      clean,
      deep: !!options.deep,
      checkpoint: head.checkpoint,
      checkpointsChecked: heads.size,
      segments: segs.size,
      nodesChecked,
      blocksChecked,
      bytesVerified,
      problems,
      restoreCheckpoint,
      unreplayableWalRecords: wal.dropped.length,
    },
    head,
  };
}

interface StoredEntry extends BlockPlace {
  len: number;
  crc: number;
  codec: number;
  /** Deduplicating volumes: the content hash the content index records for this block. */
  hash?: { prefix: number; entry: Buffer };
}

/** The plain block, or undefined if it does not open or decompress. */
async function decodes(
  stored: Buffer,
  b: StoredEntry,
  blockSize: number,
  sealer: Sealer | undefined,
): Promise<Buffer | undefined> {
  try {
    return await openStoredBlock(stored, b.codec, b, blockSize, sealer);
  } catch (e) {
    if (e instanceof DecodeError) return undefined;
    throw e;
  }
}

const hashAgrees = (hash: Buffer, want: { prefix: number; entry: Buffer }): boolean =>
  hashPrefix(hash) === want.prefix && hashMatches(want.entry, hash);
