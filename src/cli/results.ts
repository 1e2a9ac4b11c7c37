/**
 * Result shapes shared by several commands, as printed with --json (dates as ISO-8601
 * strings, sizes in bytes), and their renderings for people.
 */
import type { VolumeInfo } from '../format/volume/types.js';
import { formatBytes } from './units.js';

export interface VolumeSummary {
  url: string;
  uuid: string;
  formatVersion: number;
  size: number;
  dataBlockSize: number;
  metaBlockSize: number;
  segmentSize: number;
  createdAt: string;
  checkpoint: number;
  checkpointTime: string;
}

export function toVolumeSummary(info: VolumeInfo): VolumeSummary {
  return {
    url: info.url,
    uuid: info.uuid,
    formatVersion: info.formatVersion,
    size: info.size,
    dataBlockSize: info.dataBlockSize,
    metaBlockSize: info.metaBlockSize,
    segmentSize: info.segmentSize,
    createdAt: iso(info.createdAt),
    checkpoint: info.checkpoint,
    checkpointTime: iso(info.checkpointTime),
  };
}

/** A size for people: `10 GiB (10737418240 bytes)`, or just `512 B`. */
export function bytesWithExact(n: number): string {
  const human = formatBytes(n);
  return human.endsWith(' B') ? `${n} B` : `${human} (${n} bytes)`;
}

export function iso(d: Date | string): string {
  return typeof d === 'string' ? d : d.toISOString();
}

export function percent(part: number, whole: number): string {
  if (whole <= 0) return '0%';
  const p = (part / whole) * 100;
  return `${p < 10 ? p.toFixed(1) : p.toFixed(0)}%`;
}
