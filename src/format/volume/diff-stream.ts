/**
 * Incremental export between checkpoints: `exportDiff` writes the blocks that changed between
 * two checkpoints of a volume as a diff stream (codec/diff.ts, FORMAT.md "Diff streams"), and
 * `importDiff` applies such a stream to another volume.
 *
 * Export reads only the changed extents (diffCheckpoints), from the to-checkpoint opened
 * read-only, in chunks of at most 4 MiB with a few reads in flight, and writes them as they
 * come: memory stays bounded whatever the size of the change.
 *
 * Import changes nothing until the whole stream has been read and verified (every record's
 * checksum, the order of the records, the end record's counts and SHA-256) and the target is
 * shown to hold the diff's from-state. A stream that cannot be read twice (stdin, a pipe) is
 * spooled to a temporary file during that first pass; a regular file (or a diff already in
 * memory) is read twice (and verified again while it is applied). Only then is the target
 * opened for writing, resized if the to-size differs, written, and committed with one flush.
 *
 * The base check. After applying a diff, import names the new checkpoint of the target with a
 * marker snapshot `diff-<first 8 hex digits of the source uuid>-<source to-checkpoint>` whose
 * note records the source's full uuid and checkpoint, and deletes the marker it started from.
 * A diff from checkpoint F of source S applies only when S's marker for F exists on the
 * target and the target's current content equals the content of the checkpoint that marker
 * pins (the same index root, or, after a compaction moved blocks, the same bytes in every
 * range where the two indexes differ). The first diff of a chain has no marker to rely on:
 * the caller vouches for the target with `assumeBase` (its size must still be F's size, and no
 * marker of S may show that it holds another checkpoint of S).
 */
import { createReadStream } from 'node:fs';
import { lstat, mkdtemp, open, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { HyperError, isHyperError, toHyperError } from '../../errors.js';
import {
  DIFF_MAX_DATA_RECORD,
  DiffDecoder,
  DiffEncoder,
  DiffStreamError,
  type DiffEvent,
  type DiffHeader,
  type DiffSummary,
} from '../codec/diff.js';
import { isZero } from '../codec/binary.js';
import type { HeadRecord } from '../codec/head.js';
import { decodeSnapshot, encodeSnapshot } from '../codec/snapshot.js';
import { SNAPSHOT_PREFIX, parseSnapshotKey, snapshotKey } from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { headAt, readHead, readStoredHead, resolveCheckpoint, rootOf } from './heads.js';
import { confirmPinned, diffCheckpoints, type ChangedExtent } from './history.js';
import { MAX_VOLUME_SIZE, MiB, type CheckpointRef, type OpenOptions } from './types.js';
import { Volume } from './volume.js';

/** Bytes per data record and per read (the codec's limit). */
export const DIFF_CHUNK_SIZE = DIFF_MAX_DATA_RECORD;
const READS_IN_FLIGHT = 4;
const WRITES_IN_FLIGHT = 4;
/** Small parts (record headers, zero records) are written in batches of about this size. */
const BATCH_BYTES = 1 * MiB;

/** Writes one piece of the stream; resolves once it may be given the next. */
export type DiffSink = (chunk: Buffer) => Promise<void>;

export interface DiffProgress {
  /** export: reading changed data; verify: reading the stream; compare: checking the base; apply: writing. */
  phase: 'export' | 'verify' | 'compare' | 'apply';
  done: number;
  /** Unknown for a stream read from a pipe. */
  total?: number;
}
export type DiffProgressFn = (p: DiffProgress) => void;

export interface ExportDiffOptions {
  /** Default: from nothing (checkpoint 0, size 0): a full stream, for an empty target. */
  from?: CheckpointRef;
  /** Default: the current checkpoint. */
  to?: CheckpointRef;
  /** Stops after the record in progress; the stream then has no end record (interrupted). */
  signal?: AbortSignal;
}

export interface ExportDiffResult extends DiffSummary {
  header: DiffHeader;
  /** Bytes written to the sink. */
  streamBytes: number;
  /** The signal stopped the export: the stream is incomplete (no end record). */
  interrupted: boolean;
}

// ------------------------------------------------------------------ export

/**
 * Write the diff stream from `options.from` to `options.to` of the volume in `store` to
 * `sink`. The volume is only read (the to-checkpoint is opened read-only).
 */
export async function exportDiff(
  store: ObjectStore,
  options: ExportDiffOptions,
  sink: DiffSink,
  progress?: DiffProgressFn,
): Promise<ExportDiffResult> {
  const { head } = await readHead(store);
  // Without `from`, the stream starts from nothing (checkpoint 0, size 0): all of `to`.
  const a = options.from ? await resolveCheckpoint(store, head, options.from) : 0;
  const b = options.to ? await resolveCheckpoint(store, head, options.to) : head.checkpoint;
  const [ha, hb] = await Promise.all([
    a === 0 ? undefined : headAt(store, head, a),
    headAt(store, head, b),
  ]);
  // (diffCheckpoints confirms, after these reads, that both are still kept.)
  const extents = await diffCheckpoints(store, a === 0 ? null : { checkpoint: a }, {
    checkpoint: b,
  });
  const header: DiffHeader = {
    sourceUuid: head.uuid,
    fromCheckpoint: a,
    fromSize: ha?.size ?? 0,
    fromTimeMs: ha?.checkpointMs ?? 0,
    toCheckpoint: b,
    toSize: hb.size,
    toTimeMs: hb.checkpointMs,
    dataBlockSize: 2 ** head.dataBlockShift,
    createdMs: Date.now(),
  };
  const total = extents.reduce((s, e) => s + e.length, 0);
  const enc = new DiffEncoder(header);
  const out = new Batcher(sink);
  const volume = await Volume.open(store, { at: { checkpoint: b }, readOnly: true });
  let done = 0;
  let interrupted = false;
  try {
    await out.write(enc.start());
    const queue: { piece: ChangedExtent; data?: Promise<Buffer> }[] = [];
    const pieces = splitExtents(extents, DIFF_CHUNK_SIZE);
    let reading = 0;
    const fill = (): void => {
      while (reading < READS_IN_FLIGHT && queue.length < 64) {
        const n = pieces.next();
        if (n.done) return;
        const piece = n.value;
        if (piece.zero) queue.push({ piece });
        else {
          const data = volume.read(piece.offset, piece.length);
          data.catch(() => undefined); // awaited in order below
          queue.push({ piece, data });
          reading++;
        }
      }
    };
    fill();
    while (queue.length > 0) {
      if (options.signal?.aborted) {
        interrupted = true;
        await Promise.allSettled(queue.map((q) => q.data));
        break;
      }
      const { piece, data } = queue.shift()!;
      if (data) {
        const buf = await data;
        reading--;
        fill();
        const [h, d] = enc.data(piece.offset, buf);
        await out.write(h);
        await out.write(d);
      } else {
        fill();
        await out.write(enc.zero(piece.offset, piece.length));
      }
      done += piece.length;
      progress?.({ phase: 'export', done, total });
    }
    if (!interrupted) await out.write(enc.end());
    await out.flush();
  } finally {
    await volume.close();
  }
  return { header, ...enc.counts, streamBytes: out.bytes, interrupted };
}

/** Extents split into pieces of at most `chunk` bytes (data) or whole (zero ranges). */
function* splitExtents(extents: ChangedExtent[], chunk: number): Generator<ChangedExtent> {
  for (const e of extents) {
    if (e.zero) {
      yield e;
      continue;
    }
    for (let off = e.offset; off < e.offset + e.length; off += chunk)
      yield { offset: off, length: Math.min(chunk, e.offset + e.length - off), zero: false };
  }
}

/** Gathers small parts into larger writes; large ones go through as they are. */
class Batcher {
  private parts: Buffer[] = [];
  private held = 0;
  bytes = 0;
  constructor(private readonly sink: DiffSink) {}

  async write(b: Buffer): Promise<void> {
    this.bytes += b.length;
    if (b.length >= 64 * 1024) {
      await this.flush();
      await this.sink(b);
      return;
    }
    this.parts.push(b);
    this.held += b.length;
    if (this.held >= BATCH_BYTES) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.held === 0) return;
    const b = Buffer.concat(this.parts, this.held);
    this.parts = [];
    this.held = 0;
    await this.sink(b);
  }
}

/** A sink writing to a Node stream (stdout), waiting for it to drain. */
export function streamSink(output: NodeJS.WritableStream): DiffSink {
  return (buf) =>
    new Promise((resolve, reject) => {
      const onError = (e: Error): void => reject(e);
      output.once('error', onError);
      const ok = output.write(buf, (e) => {
        output.off('error', onError);
        if (e) reject(e);
        else if (ok) resolve();
      });
      if (!ok) {
        output.once('drain', () => {
          output.off('error', onError);
          resolve();
        });
      }
    });
}

function fileSink(file: FileHandle): DiffSink {
  return async (buf) => {
    let written = 0;
    while (written < buf.length) {
      const { bytesWritten } = await file.write(buf, written, buf.length - written);
      written += bytesWritten;
    }
  };
}

/**
 * exportDiff to the file `path`, written under a temporary name in the same directory,
 * synced and renamed when complete: a failed or interrupted export (ABORTED) leaves no
 * partial stream behind. An existing file is replaced only with `overwrite`.
 */
export async function exportDiffToFile(
  store: ObjectStore,
  path: string,
  options: ExportDiffOptions & { overwrite?: boolean },
  progress?: DiffProgressFn,
): Promise<ExportDiffResult> {
  const existing = await lstat(path).catch(() => undefined);
  if (existing && !existing.isFile()) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `${JSON.stringify(path)} exists and is not a regular file`,
      { suggestion: 'Write the diff to a regular file path, or to - (stdout).' },
    );
  }
  if (existing && !options.overwrite) {
    throw new HyperError('conflict', 'OBJECT_EXISTS', `The file ${JSON.stringify(path)} exists`, {
      suggestion: 'Add --overwrite to replace it, or choose another path.',
    });
  }
  // The volume and checkpoints are resolved before anything is created on disk.
  await readStoredHead(store);
  const temp = join(dirname(path), `.${basename(path)}.hyper-${process.pid}.partial`);
  const file = await open(temp, 'wx');
  let done = false;
  try {
    const result = await exportDiff(store, options, fileSink(file), progress);
    if (result.interrupted) {
      throw new HyperError(
        'unavailable',
        'ABORTED',
        `Export interrupted after ${result.streamBytes} bytes of the diff; no file was written.`,
      );
    }
    await file.sync();
    await file.close();
    await rename(temp, path);
    done = true;
    return result;
  } finally {
    if (!done) {
      await file.close().catch(() => undefined);
      await unlink(temp).catch(() => undefined);
    }
  }
}

// ------------------------------------------------------------------ reading a stream

/** Exact-length reads from an async iterable of buffers. */
class ByteReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private ended = false;
  constructor(private readonly it: AsyncIterator<Buffer | string>) {}

  /** `n` bytes, or fewer only at the end of the input. */
  async read(n: number): Promise<Buffer> {
    while (this.have < n && !this.ended) {
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        break;
      }
      const b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
      if (b.length > 0) {
        this.chunks.push(b);
        this.have += b.length;
      }
    }
    return this.take(Math.min(n, this.have));
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.have -= n;
      return out;
    }
    const out = Buffer.alloc(n);
    let pos = 0;
    while (pos < n) {
      const c = this.chunks[0] as Buffer;
      const k = Math.min(c.length, n - pos);
      c.copy(out, pos, 0, k);
      pos += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.have -= n;
    return out;
  }

  async close(): Promise<void> {
    await this.it.return?.();
  }
}

/** The events of a stream, each checked; a damaged or incomplete stream throws a HyperError naming `name`. */
export async function* readDiff(
  input: AsyncIterable<Buffer | string>,
  name: string,
): AsyncGenerator<DiffEvent> {
  const dec = new DiffDecoder();
  const reader = new ByteReader(input[Symbol.asyncIterator]());
  try {
    for (;;) {
      const n = dec.wants();
      if (n === 0) {
        dec.eof(await reader.read(1));
        return;
      }
      const buf = await reader.read(n);
      if (buf.length < n) dec.eof(buf);
      const ev = dec.feed(buf);
      if (ev) yield ev;
    }
  } catch (e) {
    throw diffError(e, name);
  } finally {
    await reader.close().catch(() => undefined);
  }
}

const DAMAGED_SUGGESTION =
  'The diff stream is damaged or incomplete: export it again with `hyper file export-diff` (and compare copies with sha256sum).';

/** A DiffStreamError as the HyperError a user sees; anything else unchanged. */
function diffError(e: unknown, name: string): unknown {
  if (!(e instanceof DiffStreamError)) return e;
  const message = `${e.message} (${name})`;
  switch (e.problem) {
    case 'not-diff':
      return new HyperError('invalid', 'INVALID_ARGUMENT', message, {
        suggestion: 'Give a file written by `hyper file export-diff`, or - for stdin.',
      });
    case 'version':
      return new HyperError('invalid', 'UNSUPPORTED_FORMAT_VERSION', message, {
        suggestion: 'Apply it with a hyper that reads this version (the one that wrote it).',
      });
    case 'checksum':
      return new HyperError('data', 'CHECKSUM_MISMATCH', message, {
        key: name,
        suggestion: DAMAGED_SUGGESTION,
      });
    case 'truncated':
    case 'corrupt':
      return new HyperError('data', 'CORRUPT_OBJECT', message, {
        key: name,
        suggestion: DAMAGED_SUGGESTION,
      });
  }
}

// ------------------------------------------------------------------ markers and the base check

const MARKER_NOTE = /^hyper import-diff: source ([0-9a-f]{32}) checkpoint (\d+)$/;

/** The marker snapshot naming the target checkpoint that holds `checkpoint` of source `uuid`. */
export function markerName(sourceUuid: string, checkpoint: number): string {
  return `diff-${sourceUuid.slice(0, 8)}-${checkpoint}`;
}

function markerNote(sourceUuid: string, checkpoint: number): string {
  return `hyper import-diff: source ${sourceUuid} checkpoint ${checkpoint}`;
}

export interface DiffMarker {
  /** The snapshot's name on the target. */
  name: string;
  /** The target's checkpoint it pins. */
  checkpoint: number;
  sourceUuid: string;
  /** The source checkpoint whose content that target checkpoint holds. */
  sourceCheckpoint: number;
}

/** The markers of source `sourceUuid` on the volume in `store` (one LIST, one GET each). */
export async function listMarkers(store: ObjectStore, sourceUuid: string): Promise<DiffMarker[]> {
  const prefix = `${SNAPSHOT_PREFIX}diff-${sourceUuid.slice(0, 8)}-`;
  const names: string[] = [];
  for await (const page of store.list(prefix))
    for (const o of page.objects) {
      const n = parseSnapshotKey(o.key);
      if (n !== undefined) names.push(n);
    }
  const out: DiffMarker[] = [];
  for (const name of names) {
    const m = await readMarker(store, name);
    if (m && m.sourceUuid === sourceUuid) out.push(m);
  }
  return out.sort((x, y) => y.sourceCheckpoint - x.sourceCheckpoint);
}

/** A marker snapshot, or undefined when there is none of that name or it is not a marker. */
async function readMarker(store: ObjectStore, name: string): Promise<DiffMarker | undefined> {
  let body: Buffer;
  try {
    body = (await store.get(snapshotKey(name))).body;
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND')) return undefined;
    throw e;
  }
  let rec;
  try {
    rec = decodeSnapshot(body);
  } catch {
    return undefined;
  }
  const m = MARKER_NOTE.exec(rec.note);
  if (rec.kind !== 'snapshot' || !m) return undefined;
  return {
    name,
    checkpoint: rec.checkpoint,
    sourceUuid: m[1] as string,
    sourceCheckpoint: Number(m[2]),
  };
}

/** Is a snapshot `name` there that is not a marker of `sourceUuid` (which import may replace)? */
async function foreignSnapshot(
  store: ObjectStore,
  name: string,
  sourceUuid: string,
): Promise<boolean> {
  const exists = await store.head(snapshotKey(name));
  if (!exists) return false;
  const m = await readMarker(store, name);
  return m?.sourceUuid !== sourceUuid;
}

/**
 * Pin `checkpoint` as holding `sourceCheckpoint` of `sourceUuid`, under that marker's name
 * (replacing an older marker of the same name). Returns the name.
 */
async function putMarker(
  store: ObjectStore,
  checkpoint: number,
  sourceUuid: string,
  sourceCheckpoint: number,
): Promise<string> {
  const name = markerName(sourceUuid, sourceCheckpoint);
  const key = snapshotKey(name);
  const body = encodeSnapshot({
    checkpoint,
    createdMs: Date.now(),
    kind: 'snapshot',
    note: markerNote(sourceUuid, sourceCheckpoint),
  });
  try {
    await store.put(key, body, { ifNoneMatch: true });
  } catch (e) {
    if (!isHyperError(e, 'OBJECT_EXISTS')) throw e;
    // Checked before applying: what is there is an older marker of this source.
    await store.put(key, body);
  }
  await confirmPinned(store, checkpoint, key);
  return name;
}

export type BaseProof =
  | { kind: 'marker'; marker: DiffMarker }
  /**
   * The marker's checkpoint, changed since only where this diff rewrites (an import of it cut
   * short): applying it gives its to-checkpoint all the same.
   */
  | { kind: 'resumed'; marker: DiffMarker }
  | { kind: 'assumed'; marker?: undefined }
  /** A full stream (from checkpoint 0) onto a volume that maps no block. */
  | { kind: 'empty'; marker?: undefined };

/** What findBase establishes before the diff's records are known. */
type BaseFinding = BaseProof | { kind: 'changed'; marker: DiffMarker };

interface BaseCheck {
  assumeBase?: boolean;
  progress?: DiffProgressFn;
  signal?: AbortSignal;
  /**
   * What the diff rewrites: a target changed since its marker only there is taken as the
   * diff's base (`resumed`). Without it, such a target is refused.
   */
  rewritten?: Rewritten;
}

/**
 * Does the target's current content (`head`) equal the content of its checkpoint `id`? Equal
 * index roots say yes at once; otherwise every range where the two indexes differ (a
 * compaction moves blocks without changing them) is read from both and compared.
 */
export async function sameContent(
  store: ObjectStore,
  head: HeadRecord,
  id: number,
  options: BaseCheck = {},
): Promise<boolean> {
  let other: HeadRecord;
  try {
    other = await headAt(store, head, id);
  } catch (e) {
    if (isHyperError(e) && (e.kind === 'not-found' || e.kind === 'data')) return false;
    throw e;
  }
  if (other.size !== head.size) return false;
  if (other.rootLevel === head.rootLevel && other.root.equals(head.root)) return true;
  const extents = await diffCheckpoints(store, { checkpoint: id }, { checkpoint: head.checkpoint });
  return readsSame(store, id, other.size, head.checkpoint, extents, options);
}

/**
 * Do checkpoints `x` (of `xSize` bytes) and `y` read the same in `ranges` (within `y`'s size)?
 * What lies past `xSize` compares with zeros.
 */
async function readsSame(
  store: ObjectStore,
  x: number,
  xSize: number,
  y: number,
  ranges: readonly { offset: number; length: number }[],
  options: BaseCheck,
): Promise<boolean> {
  if (ranges.length === 0) return true;
  const total = ranges.reduce((s, e) => s + e.length, 0);
  const vx = await Volume.open(store, { at: { checkpoint: x }, readOnly: true });
  try {
    const vy = await Volume.open(store, { at: { checkpoint: y }, readOnly: true });
    try {
      let done = 0;
      for (const piece of splitExtents(
        ranges.map((e) => ({ ...e, zero: false })),
        DIFF_CHUNK_SIZE,
      )) {
        options.signal?.throwIfAborted();
        const within = Math.max(0, Math.min(piece.length, xSize - piece.offset));
        const [p, q] = await Promise.all([
          within > 0 ? vx.read(piece.offset, within) : Buffer.alloc(0),
          vy.read(piece.offset, piece.length),
        ]);
        if (!p.equals(q.subarray(0, within)) || !isZero(q, within)) return false;
        done += piece.length;
        options.progress?.({ phase: 'compare', done, total });
      }
      return true;
    } finally {
      await vy.close();
    }
  } finally {
    await vx.close();
  }
}

/**
 * The byte ranges a diff's records rewrite whole (data and zero records alike), merged. The
 * records come in address order without overlap (the decoder checks), so ranges are appended.
 */
export class Rewritten {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  add(offset: number, length: number): void {
    if (length <= 0) return;
    const n = this.ends.length;
    if (n > 0 && this.ends[n - 1] === offset) this.ends[n - 1] = offset + length;
    else {
      this.starts.push(offset);
      this.ends.push(offset + length);
    }
  }

  /** The parts of [offset, offset + length) that no range covers, in order. */
  outside(offset: number, length: number): { offset: number; length: number }[] {
    const end = offset + length;
    // The first range that ends after `offset`.
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.ends[mid] as number) <= offset) lo = mid + 1;
      else hi = mid;
    }
    const out: { offset: number; length: number }[] = [];
    let at = offset;
    for (let i = lo; i < this.starts.length && at < end; i++) {
      const s = this.starts[i] as number;
      if (s >= end) break;
      if (s > at) out.push({ offset: at, length: s - at });
      at = Math.max(at, this.ends[i] as number);
    }
    if (at < end) out.push({ offset: at, length: end - at });
    return out;
  }
}

/**
 * Has the target (`head`) changed since it received the diff's from-checkpoint (`marker`) only
 * where the diff rewrites anyway (what an import of this diff that was cut short leaves), or
 * at and past the diff's to-size (which the import cuts off)? Then applying the diff gives
 * exactly its to-checkpoint. Its size must be the from-size or the to-size (the import grows
 * the volume first, and shrinks it last).
 */
async function changedOnlyWithin(
  store: ObjectStore,
  head: HeadRecord,
  header: DiffHeader,
  marker: DiffMarker,
  rewritten: Rewritten,
  options: BaseCheck,
): Promise<boolean> {
  // A full stream's base is a volume that maps no block, of any size (the import pinned the
  // one it started from); another diff's is the from-checkpoint, of its size.
  const full = header.fromCheckpoint === 0;
  let baseSize: number;
  let extents: ChangedExtent[];
  try {
    const base = await headAt(store, head, marker.checkpoint);
    if (full ? rootOf(base).total() !== 0 : base.size !== header.fromSize) return false;
    baseSize = base.size;
    if (head.size !== baseSize && head.size !== header.toSize) return false;
    extents = await diffCheckpoints(
      store,
      { checkpoint: marker.checkpoint },
      { checkpoint: head.checkpoint },
    );
  } catch (e) {
    if (isHyperError(e) && (e.kind === 'not-found' || e.kind === 'data')) return false;
    throw e;
  }
  const limit = Math.min(header.toSize, head.size);
  const rest: { offset: number; length: number }[] = [];
  for (const e of extents)
    for (const p of rewritten.outside(e.offset, e.length)) {
      const length = Math.min(p.length, limit - p.offset);
      if (length > 0) rest.push({ offset: p.offset, length });
    }
  // A compaction moves blocks without changing them: what differs in the indexes is read.
  return readsSame(store, marker.checkpoint, full ? 0 : baseSize, head.checkpoint, rest, options);
}

const FIRST_DIFF_SUGGESTION = (from: number): string =>
  `For the first diff of a chain, make the target a copy of checkpoint ${from} of the source (hyper file export SOURCE --at ${from} base.img, then hyper file import base.img TARGET --create; or hyper snapshot clone SOURCE --from ${from} TARGET) and pass --assume-base.`;

/**
 * Check that the target (its head `head`) holds the diff's from-state; returns what proves it,
 * or throws PRECONDITION_FAILED (or INVALID_ARGUMENT for the source itself) saying what is
 * wrong. Reads only.
 */
export async function checkBase(
  store: ObjectStore,
  head: HeadRecord,
  header: DiffHeader,
  options: BaseCheck = {},
): Promise<BaseProof> {
  const found = await findBase(store, head, header, options);
  if (found.kind !== 'changed') return found;
  return settleChanged(store, head, header, found.marker, options);
}

/**
 * The target holds the diff's from-checkpoint's marker but reads otherwise now: resumed if it
 * changed only where the diff rewrites (`options.rewritten`), else refused.
 */
async function settleChanged(
  store: ObjectStore,
  head: HeadRecord,
  header: DiffHeader,
  marker: DiffMarker,
  options: BaseCheck,
): Promise<BaseProof> {
  const { rewritten } = options;
  if (rewritten && (await changedOnlyWithin(store, head, header, marker, rewritten, options)))
    return { kind: 'resumed', marker };
  const url = store.url;
  throw new HyperError(
    'conflict',
    'PRECONDITION_FAILED',
    `Wrong base: ${url} was changed after it received checkpoint ${header.fromCheckpoint} of source volume ${header.sourceUuid}: its current checkpoint ${head.checkpoint} no longer holds the content of snapshot ${marker.name} (checkpoint ${marker.checkpoint})${rewritten ? ', and not only where this diff writes' : ''}`,
    {
      suggestion: `Bring it back with hyper snapshot restore ${url} --to ${marker.name}, then import the diff again.`,
    },
  );
}

/** checkBase's findings from the markers and the head alone (not the diff's records). */
async function findBase(
  store: ObjectStore,
  head: HeadRecord,
  header: DiffHeader,
  options: BaseCheck,
): Promise<BaseFinding> {
  const url = store.url;
  const src = header.sourceUuid;
  const from = header.fromCheckpoint;
  if (head.uuid === src) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `${url} is the volume the diff was exported from (uuid ${src})`,
      {
        suggestion:
          'Apply a diff to another volume (a copy); to bring a volume back to a checkpoint, use hyper snapshot restore.',
      },
    );
  }
  const refuse = (message: string, suggestion: string): HyperError =>
    new HyperError('conflict', 'PRECONDITION_FAILED', message, { suggestion });
  if (from === 0) {
    // A full stream: its base is a volume of zeros, whatever its size (import resizes it).
    const mapped = rootOf(head).total();
    if (mapped === 0) return { kind: 'empty' };
    // An import of it that was cut short pinned the empty volume it started from; unless the
    // target holds a state a marker names (its pin outlived a finished import), that is the
    // base, settled by where the stream writes.
    const markers = await listMarkers(store, src);
    const pin = markers.find((m) => m.sourceCheckpoint === 0);
    let later = false;
    for (const m of markers)
      if (m !== pin && !later) later = await sameContent(store, head, m.checkpoint, options);
    if (pin && !later) return { kind: 'changed', marker: pin };
    throw refuse(
      `Wrong base: this diff holds all of checkpoint ${header.toCheckpoint} of source volume ${src} (exported without --from) and applies only to a volume that holds no data, but ${url} maps ${mapped} block${mapped === 1 ? '' : 's'}`,
      `Import it into a new volume (hyper file create TARGET --size ${header.toSize}; import-diff sets the size), or export the diff --from the checkpoint that ${url} holds.`,
    );
  }
  const markers = await listMarkers(store, src);
  const exact = markers.find((m) => m.sourceCheckpoint === from);
  if (
    exact &&
    head.size === header.fromSize &&
    (await sameContent(store, head, exact.checkpoint, options))
  )
    return { kind: 'marker', marker: exact };
  // Does another marker show that the target holds some other checkpoint of the source?
  for (const m of markers) {
    if (m === exact) continue;
    if (await sameContent(store, head, m.checkpoint, options)) {
      if (m.sourceCheckpoint === header.toCheckpoint) {
        throw refuse(
          `Wrong base: ${url} already holds checkpoint ${m.sourceCheckpoint} of source volume ${src} (snapshot ${m.name}), where this diff ends: it was applied before`,
          'Nothing to do for this diff; apply the next one (export-diff --from the checkpoint this one ends at).',
        );
      }
      throw refuse(
        `Wrong base: ${url} holds checkpoint ${m.sourceCheckpoint} of source volume ${src} (snapshot ${m.name}), but this diff starts at checkpoint ${from}`,
        `Apply the diff that starts where the target is: hyper file export-diff SOURCE --from ${m.sourceCheckpoint} --to ${header.toCheckpoint} FILE.`,
      );
    }
  }
  // A marker of the from-checkpoint, even one an --assume-base import pinned as it began,
  // settles the base rather than the assumption.
  if (exact) return { kind: 'changed', marker: exact };
  if (options.assumeBase) {
    if (head.size !== header.fromSize) {
      throw refuse(
        `Wrong base: ${url} is ${head.size} bytes, but checkpoint ${from} of the source was ${header.fromSize} bytes, so the target cannot be a copy of it`,
        FIRST_DIFF_SUGGESTION(from),
      );
    }
    return { kind: 'assumed' };
  }
  const others = markers.map((m) => `${m.name}: checkpoint ${m.sourceCheckpoint}`).join(', ');
  throw refuse(
    `Wrong base: nothing shows that ${url} holds checkpoint ${from} of source volume ${src}: it has no import-diff snapshot for that checkpoint${others ? ` (it has ${others}, and has been changed since)` : ''}`,
    FIRST_DIFF_SUGGESTION(from),
  );
}

// ------------------------------------------------------------------ import

/**
 * A diff to import: a file (read twice: verified, then applied), a stream (spooled to a
 * temporary file while it is verified), or bytes already in memory (read twice, no spool).
 */
export type DiffInput =
  | { path: string }
  | { stream: AsyncIterable<Buffer | string>; name: string }
  | { bytes: Buffer; name: string };

export interface ImportDiffOptions extends Pick<
  OpenOptions,
  'holder' | 'force' | 'logger' | 'openStore' | 'leaseTtlMs'
> {
  /** The first diff of a chain: trust that the target holds the from-checkpoint's content. */
  assumeBase?: boolean;
  /** Verify the stream and the base, change nothing. */
  dryRun?: boolean;
  /** Where a stream is spooled (default: the system's temporary directory). */
  spoolDir?: string;
  signal?: AbortSignal;
}

export interface ImportDiffResult extends DiffSummary {
  header: DiffHeader;
  streamBytes: number;
  /** How the base was established: a marker snapshot, or --assume-base. */
  base: BaseProof;
  /** The target's checkpoint and size before. */
  previousCheckpoint: number;
  previousSize: number;
  /** The checkpoint holding the diff's to-state (undefined on a dry run). */
  checkpoint?: number;
  checkpointTime?: Date;
  size: number;
  /** The marker snapshot naming that checkpoint (undefined on a dry run). */
  snapshot?: string;
  /** The marker the import started from, now deleted (undefined when none or kept). */
  removedSnapshot?: string;
  /** The stream was copied to a temporary file before being applied. */
  spooled: boolean;
  dryRun: boolean;
}

const aborted = (what: string): HyperError =>
  new HyperError('unavailable', 'ABORTED', `Interrupted ${what}.`);

/** Bytes pass through, counted (and copied to `spool` when given). */
async function* tap(
  input: AsyncIterable<Buffer | string>,
  count: (n: number) => void,
  spool?: FileHandle,
): AsyncGenerator<Buffer> {
  const write = spool ? fileSink(spool) : undefined;
  for await (const piece of input) {
    const b = typeof piece === 'string' ? Buffer.from(piece) : piece;
    if (write) await write(b);
    count(b.length);
    yield b;
  }
}

/**
 * Apply the diff stream `input` to the volume in `store`. Nothing is written to the target
 * unless the whole stream verifies and the target holds the diff's from-state (checkBase);
 * otherwise the HyperError says what is wrong. See the top of this file.
 */
export async function importDiff(
  input: DiffInput,
  store: ObjectStore,
  options: ImportDiffOptions = {},
  progress?: DiffProgressFn,
): Promise<ImportDiffResult> {
  // No target volume: say so before reading anything.
  await readStoredHead(store);
  if ('path' in input) {
    const st = await stat(input.path).catch((e: unknown) => {
      const code = (e as NodeJS.ErrnoException).code;
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `Cannot read the diff ${JSON.stringify(input.path)}: ${code === 'ENOENT' ? 'no such file' : String(code ?? e)}`,
        {
          cause: e,
          suggestion: 'Give the path of a file written by hyper file export-diff, or - for stdin.',
        },
      );
    });
    // A pipe or a device cannot be read twice: it is spooled like a stream.
    if (!st.isFile())
      return importDiff(
        { stream: createReadStream(input.path), name: input.path },
        store,
        options,
        progress,
      );
    const source = createReadStream(input.path, { highWaterMark: 1 * MiB });
    const verified = await verifyPass(
      source,
      input.path,
      st.size,
      undefined,
      store,
      options,
      progress,
    );
    return await applyPass(
      () => createReadStream(input.path, { highWaterMark: 1 * MiB }),
      input.path,
      verified,
      store,
      options,
      progress,
    );
  }
  if ('bytes' in input) {
    const { bytes } = input;
    const once = async function* (): AsyncGenerator<Buffer> {
      yield bytes;
    };
    const verified = await verifyPass(
      once(),
      input.name,
      bytes.length,
      undefined,
      store,
      options,
      progress,
    );
    return await applyPass(once, input.name, verified, store, options, progress);
  }
  const dir = await mkdtemp(join(options.spoolDir ?? tmpdir(), 'hyper-diff-'));
  try {
    const path = join(dir, 'stream');
    const spool = await open(path, 'wx');
    let verified: Verified;
    try {
      verified = await verifyPass(
        input.stream,
        input.name,
        undefined,
        spool,
        store,
        options,
        progress,
      );
    } finally {
      await spool.close();
    }
    verified.spooled = true;
    return await applyPass(
      () => createReadStream(path, { highWaterMark: 1 * MiB }),
      input.name,
      verified,
      store,
      options,
      progress,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** What the first pass established. */
interface Verified {
  header: DiffHeader;
  summary: DiffSummary;
  streamBytes: number;
  /** The target's head when its base was checked, and what proved the base. */
  head: HeadRecord;
  base: BaseProof;
  /** What the diff's records rewrite (for the base check of a target that moved meanwhile). */
  rewritten: Rewritten;
  spooled: boolean;
}

/**
 * Pass 1: read the whole stream (copying it to `spool` if given), checking every record and
 * the end; check the target's base as soon as the header is known. Writes nothing to the store.
 */
async function verifyPass(
  source: AsyncIterable<Buffer | string>,
  name: string,
  total: number | undefined,
  spool: FileHandle | undefined,
  store: ObjectStore,
  options: ImportDiffOptions,
  progress: DiffProgressFn | undefined,
): Promise<Verified> {
  let read = 0;
  const counted = tap(
    source,
    (n) => {
      read += n;
      progress?.({ phase: 'verify', done: read, ...(total === undefined ? {} : { total }) });
    },
    spool,
  );
  let found:
    (Omit<Verified, 'summary' | 'streamBytes' | 'base'> & { base: BaseFinding }) | undefined;
  const rewritten = new Rewritten();
  for await (const ev of readDiff(counted, name)) {
    if (options.signal?.aborted) throw aborted('while reading the diff; nothing was changed');
    if (ev.kind === 'data') rewritten.add(ev.offset, ev.data.length);
    else if (ev.kind === 'zero') rewritten.add(ev.offset, ev.length);
    else if (ev.kind === 'header') {
      const header = ev.header;
      checkHeader(header, name);
      const { head } = await readHead(store);
      // A target changed since its marker is judged once the records say where the diff writes.
      const base = await findBase(store, head, header, { ...options, progress });
      const marker = markerName(header.sourceUuid, header.toCheckpoint);
      if (await foreignSnapshot(store, marker, header.sourceUuid)) {
        throw new HyperError(
          'conflict',
          'SNAPSHOT_EXISTS',
          `${store.url} has a snapshot named "${marker}" that import-diff did not make; it needs that name for the checkpoint it would commit`,
          {
            suggestion: `Rename it: create another name for its checkpoint, then hyper snapshot delete ${store.url} ${marker}.`,
          },
        );
      }
      found = { header, head, base, rewritten, spooled: false };
    } else if (ev.kind === 'end' && found) {
      const base =
        found.base.kind === 'changed'
          ? await settleChanged(store, found.head, found.header, found.base.marker, {
              ...options,
              progress,
              rewritten,
            })
          : found.base;
      return { ...found, base, summary: ev.summary, streamBytes: ev.streamBytes };
    }
  }
  // (readDiff throws on a stream without a header or an end record.)
  throw new Error('importDiff: the stream ended without its end record');
}

/**
 * Pass 2: take the lease, check the base again if the target moved meanwhile, apply the stream
 * read again (`reread`, checked again as it goes), commit, then name the new checkpoint with its
 * marker and delete the marker it started from.
 */
async function applyPass(
  /** The diff again, from its start (the file, the spool or the bytes verified). */
  reread: () => AsyncIterable<Buffer | string>,
  name: string,
  v: Verified,
  store: ObjectStore,
  options: ImportDiffOptions,
  progress: DiffProgressFn | undefined,
): Promise<ImportDiffResult> {
  const { header, summary, head } = v;
  const result: ImportDiffResult = {
    header,
    ...summary,
    streamBytes: v.streamBytes,
    base: v.base,
    previousCheckpoint: head.checkpoint,
    previousSize: head.size,
    size: header.toSize,
    spooled: v.spooled,
    dryRun: !!options.dryRun,
  };
  if (options.dryRun) return result;
  const signal = options.signal;
  if (signal?.aborted) throw aborted('before applying the diff; nothing was changed');

  const volume = await Volume.open(store, {
    ...(options.holder === undefined ? {} : { holder: options.holder }),
    ...(options.force === undefined ? {} : { force: options.force }),
    ...(options.logger === undefined ? {} : { logger: options.logger }),
    ...(options.openStore === undefined ? {} : { openStore: options.openStore }),
    ...(options.leaseTtlMs === undefined ? {} : { leaseTtlMs: options.leaseTtlMs }),
    flushIntervalMs: 0,
  });
  const now = volume.headRecord;
  let touched = false;
  let committed: { checkpoint: number; time: Date } | undefined;
  /** The marker pinned for the start (see below), deleted once the import is done. */
  let pinned: string | undefined;
  try {
    if (now.checkpoint !== head.checkpoint || !now.root.equals(head.root) || now.size !== head.size)
      result.base = await checkBase(store, now, header, {
        ...options,
        progress,
        rewritten: v.rewritten,
      });
    result.previousCheckpoint = now.checkpoint;
    result.previousSize = now.size;
    if (result.base.marker === undefined) {
      // No marker shows the base (an empty volume, or --assume-base): pin the checkpoint the
      // import starts from as the from-checkpoint's marker before the first write, so that an
      // import killed half way is finished by running it again, like any other. (A snapshot of
      // that name that is not a marker is left alone.)
      const name = markerName(header.sourceUuid, header.fromCheckpoint);
      if (!(await foreignSnapshot(store, name, header.sourceUuid)))
        pinned = await putMarker(store, now.checkpoint, header.sourceUuid, header.fromCheckpoint);
    }
    if (header.toSize > now.size) {
      touched = true;
      await volume.resize(header.toSize);
    }
    const total = summary.dataBytes + summary.zeroBytes;
    let applied = 0;
    const inFlight = new Set<Promise<void>>();
    let failure: unknown;
    const start = (p: Promise<void>, n: number): void => {
      touched = true;
      const tracked: Promise<void> = p
        .then(
          () => {
            applied += n;
            progress?.({ phase: 'apply', done: applied, total });
          },
          (e: unknown) => {
            failure ??= e;
          },
        )
        .finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
    };
    for await (const ev of readDiff(reread(), name)) {
      if (signal?.aborted) throw aborted('while applying the diff');
      if (failure !== undefined) throw failure;
      if (ev.kind === 'header' && !sameHeader(ev.header, header))
        throw new HyperError(
          'conflict',
          'PRECONDITION_FAILED',
          `${name} changed while it was being imported`,
        );
      if (ev.kind === 'data') start(volume.write(ev.offset, ev.data), ev.data.length);
      if (ev.kind === 'zero') start(volume.writeZeroes(ev.offset, ev.length), ev.length);
      while (inFlight.size >= WRITES_IN_FLIGHT) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    touched = true;
    committed =
      header.toSize < volume.info.size
        ? await volume.resize(header.toSize, { allowShrink: true })
        : await volume.flush();
  } catch (e) {
    await rollBack(volume, touched, now.checkpoint, e, store.url);
  }
  await volume.close();
  const cp = committed as { checkpoint: number; time: Date };
  result.checkpoint = cp.checkpoint;
  result.checkpointTime = cp.time;

  // Name the new state; forget the one it came from.
  const marker = markerName(header.sourceUuid, header.toCheckpoint);
  try {
    await putMarker(store, cp.checkpoint, header.sourceUuid, header.toCheckpoint);
  } catch (e) {
    const h = toHyperError(e);
    throw new HyperError(
      h.kind,
      h.code,
      `The diff was applied (checkpoint ${cp.checkpoint} of ${store.url}), but its marker snapshot ${marker} could not be written: ${h.message}`,
      {
        cause: e,
        suggestion: `Without the marker the next import-diff cannot prove its base. Once the store works, go back with hyper snapshot restore ${store.url} --to ${result.base.marker?.name ?? result.previousCheckpoint} and run this import again${result.base.kind === 'assumed' ? ' with --assume-base' : ''}.`,
      },
    );
  }
  result.snapshot = marker;
  const old = result.base.marker?.name;
  if (old !== undefined && old !== marker) {
    // Best effort: a marker left behind only keeps its checkpoint from compaction.
    const removed = await store.delete([snapshotKey(old)]).then(
      () => true,
      () => false,
    );
    if (removed) result.removedSnapshot = old;
  }
  // (Its own pin of the start: the same, not reported.)
  if (pinned !== undefined && pinned !== marker && pinned !== old)
    await store.delete([snapshotKey(pinned)]).catch(() => undefined);
  return result;
}

/**
 * The apply failed (the store, an interruption, the file changing under us): put the target
 * back to the checkpoint it started from, then rethrow. Without a rollback, closing the
 * volume would commit the part written so far. Never returns.
 */
async function rollBack(
  volume: Volume,
  touched: boolean,
  baseCheckpoint: number,
  error: unknown,
  url: string,
): Promise<never> {
  let rolledBack = !touched;
  if (touched) {
    try {
      await volume.restore(baseCheckpoint);
      rolledBack = true;
    } catch {
      // reported below
    }
  }
  await volume.close().catch(() => undefined);
  if (!touched) throw error;
  const e = toHyperError(error);
  throw new HyperError(
    e.kind,
    e.code,
    rolledBack
      ? `${e.message} The target was put back to the content of checkpoint ${baseCheckpoint}, where the import started.`
      : `${e.message} The target may hold part of the diff.`,
    {
      cause: error,
      ...(e.key === undefined ? {} : { key: e.key }),
      suggestion: rolledBack
        ? 'Run the import again once the cause is fixed.'
        : `Bring the target back with hyper snapshot restore ${url} --to ${baseCheckpoint}, then import the diff again.`,
    },
  );
}

function checkHeader(h: DiffHeader, name: string): void {
  for (const [what, v] of [
    ['from', h.fromSize],
    ['to', h.toSize],
  ] as const) {
    if (v % 512 !== 0 || v > MAX_VOLUME_SIZE) {
      throw new HyperError(
        'data',
        'CORRUPT_OBJECT',
        `The diff stream header gives a ${what} size of ${v} bytes, which no volume has (${name})`,
        { key: name, suggestion: DAMAGED_SUGGESTION },
      );
    }
  }
}

function sameHeader(a: DiffHeader, b: DiffHeader): boolean {
  return (Object.keys(a) as (keyof DiffHeader)[]).every((k) => a[k] === b[k]);
}
