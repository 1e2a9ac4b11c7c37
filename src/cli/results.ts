/**
 * Building the --json results described in src/cli/vocabulary.ts (its rules: bytes as
 * integers, `…Seconds` rounded to milliseconds, ISO-8601 times, null for absent, `…Count` for
 * counts, `requests` as RequestStats), and small renderings for people. No zod here: the
 * schemas are for tests and are not loaded when a command runs.
 */
import type { DiffHeader, DiffSummary } from '../format/codec/diff.js';
import { storeStats, type ObjectStore } from '../format/store/index.js';
import type { VolumeInfo } from '../format/volume/types.js';
import { formatBytes } from './units.js';
import type { DiffStreamFields, RequestStats, VolumeSummary } from './vocabulary.js';

export type { VolumeSummary } from './vocabulary.js';

export function toVolumeSummary(info: VolumeInfo): VolumeSummary {
  return {
    url: info.url,
    uuid: info.uuid,
    formatVersion: info.formatVersion,
    compression: info.compression,
    encryption: info.encryption,
    keyId: info.keyId ?? null,
    dedup: info.dedup,
    size: info.size,
    dataBlockSize: info.dataBlockSize,
    metaBlockSize: info.metaBlockSize,
    segmentSize: info.segmentSize,
    createdAt: iso(info.createdAt),
    checkpoint: info.checkpoint,
    checkpointTime: iso(info.checkpointTime),
  };
}

/** The requests made through the given stores (0 for stores that do not count). */
export function requestStats(...stores: ObjectStore[]): RequestStats {
  const r: RequestStats = {
    totalCount: 0,
    getCount: 0,
    putCount: 0,
    listCount: 0,
    headCount: 0,
    deleteCount: 0,
    receivedBytes: 0,
    sentBytes: 0,
  };
  for (const store of stores) {
    const s = storeStats(store);
    if (!s) continue;
    r.getCount += s.get;
    r.putCount += s.put;
    r.listCount += s.list;
    r.headCount += s.head;
    r.deleteCount += s.delete;
    r.totalCount += s.get + s.put + s.list + s.head + s.delete;
    r.receivedBytes += s.bytesIn;
    r.sentBytes += s.bytesOut;
  }
  return r;
}

/** A duration in milliseconds as the vocabulary's seconds (rounded to milliseconds). */
export function toSeconds(ms: number): number {
  return Math.round(ms) / 1000;
}

/** Seconds elapsed since `startedMs` (a `performance.now()` reading), rounded to ms. */
export function secondsSince(startedMs: number): number {
  return toSeconds(performance.now() - startedMs);
}

/** A size for people: `10 GiB (10737418240 bytes)`, or just `512 B`. */
export function bytesWithExact(n: number): string {
  const human = formatBytes(n);
  return human.endsWith(' B') ? `${n} B` : `${human} (${n} bytes)`;
}

export function iso(d: Date | string): string {
  return typeof d === 'string' ? d : d.toISOString();
}

/** ISO-8601, or null for no time (undefined, or the epoch a cleared record holds). */
export function isoOrNull(d: Date | string | undefined | null): string | null {
  if (d === undefined || d === null) return null;
  const t = typeof d === 'string' ? Date.parse(d) : d.getTime();
  return Number.isFinite(t) && t > 0 ? iso(d) : null;
}

export function percent(part: number, whole: number): string {
  if (whole <= 0) return '0%';
  const p = (part / whole) * 100;
  return `${p < 10 ? p.toFixed(1) : p.toFixed(0)}%`;
}

/** The header and counts of a diff stream, as export-diff and import-diff show them. */
export function diffStreamFields(
  r: DiffSummary & { header: DiffHeader; streamBytes: number },
): DiffStreamFields {
  const h = r.header;
  return {
    sourceUuid: h.sourceUuid,
    fromCheckpoint: h.fromCheckpoint,
    fromSize: h.fromSize,
    fromTime: iso(new Date(h.fromTimeMs)),
    toCheckpoint: h.toCheckpoint,
    toSize: h.toSize,
    toTime: iso(new Date(h.toTimeMs)),
    dataBlockSize: h.dataBlockSize,
    dataRecordCount: r.dataRecordCount,
    zeroRecordCount: r.zeroRecordCount,
    dataBytes: r.dataBytes,
    zeroBytes: r.zeroBytes,
    streamBytes: r.streamBytes,
  };
}
