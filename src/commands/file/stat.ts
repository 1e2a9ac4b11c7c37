import { DEFAULT_GRACE_MS } from '../../format/volume/compact.js';
import { BaseCommand } from '../../base-command.js';
import {
  bytesWithExact,
  iso,
  percent,
  toVolumeSummary,
  type VolumeSummary,
} from '../../cli/results.js';
import { formatDuration, formatBytes } from '../../cli/units.js';
import { volumeUrl } from '../../flags.js';
import { statVolume, type SpaceUsage, type VolumeStat } from '../../format/volume/admin.js';
import { Flags } from '@oclif/core';

export interface LeaseSummary {
  holder: string;
  epoch: number;
  expiresAt: string;
  /** True when the lease was held and not expired when read. */
  live: boolean;
}

export interface FileStatResult extends VolumeSummary {
  /** Data blocks that hold data (not holes or zeros). */
  mappedBlocks: number;
  /** Segment objects. */
  segments: number;
  /** Segments holding flushes that never committed (removed by compaction). */
  uncommittedSegments: number;
  /** Bytes of all objects of the volume on the store. */
  storedBytes: number;
  /** The size rounded up to whole data blocks. */
  provisionedBytes: number;
  /** Mapped blocks × data block size. */
  usedBytes: number;
  /** Named snapshots. */
  snapshots: number;
  /** The last lease record, or null if none was ever taken or it was released. */
  lease: LeaseSummary | null;
  walUrl?: string;
  /** Checkpoints that can be opened, restored or cloned. */
  checkpoints: number;
  oldestCheckpoint?: number;
  /** Checkpoints of this volume that clones start from. */
  clonePins: number;
  /** For a clone: the parent volume and its checkpoint. */
  parent?: { url: string; checkpoint: number };
  /** With --space: live (current checkpoint), history-only and garbage bytes. */
  space?: SpaceUsage;
}

export function toStatResult(st: VolumeStat, url: string): FileStatResult {
  return {
    ...toVolumeSummary({ ...st, url: st.url || url }),
    mappedBlocks: st.mappedBlocks,
    segments: st.segments,
    uncommittedSegments: st.uncommittedSegments,
    storedBytes: st.storedBytes,
    provisionedBytes: st.provisionedBytes,
    usedBytes: st.usedBytes,
    snapshots: st.snapshots,
    lease: st.lease
      ? {
          holder: st.lease.holder,
          epoch: st.lease.epoch,
          expiresAt: iso(st.lease.expiresAt),
          live: st.lease.live,
        }
      : null,
    ...(st.walUrl === undefined ? {} : { walUrl: st.walUrl }),
    checkpoints: st.checkpoints,
    ...(st.oldestCheckpoint === undefined ? {} : { oldestCheckpoint: st.oldestCheckpoint }),
    clonePins: st.clonePins,
    ...(st.parent === undefined ? {} : { parent: st.parent }),
    ...(st.space === undefined ? {} : { space: st.space }),
  };
}

export default class FileStat extends BaseCommand<typeof FileStat> {
  static override aliases = ['file:info'];

  static override summary = 'Show the layout, current checkpoint, space use and lease of a volume.';

  static override description = `Reads the volume's head and lease and lists its objects; it never writes, so it is safe while the volume is served. "Provisioned" is the logical size in whole data blocks, "used" the bytes of blocks that hold data, and "stored" the bytes of every object of the volume on the store (including data kept only for earlier checkpoints).`;

  static override examples = [
    {
      description: 'Show a volume.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/',
    },
    {
      description: 'Print the same as JSON (dates in ISO-8601, sizes in bytes).',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    space: Flags.boolean({
      summary:
        'Also split stored bytes into live (the current checkpoint), history (only older checkpoints) and garbage (what compaction reclaims); reads the retained indexes.',
    }),
  };

  public async run(): Promise<FileStatResult> {
    const { url } = this.args;
    const store = await this.openStore(url);
    const spinner = this.flags.space ? this.spinner('Walking the retained indexes…') : undefined;
    const st = await statVolume(store, {
      space: this.flags.space,
      openStore: (u) => this.openStore(u),
      signal: this.interruptible(),
    });
    spinner?.stop();
    const result = toStatResult(st, url);
    this.log(renderStat(result, (rows) => this.keyValueTable(rows)));
    return result;
  }
}

export function renderStat(r: FileStatResult, table: (rows: [string, string][]) => string): string {
  const lease = renderLease(r.lease);
  const rows: [string, string][] = [
    ['Volume', r.url],
    ['UUID', r.uuid],
    ['Format version', String(r.formatVersion)],
    ['Size', bytesWithExact(r.size)],
    ['Data block size', formatBytes(r.dataBlockSize)],
    ['Metadata block size', formatBytes(r.metaBlockSize)],
    ['Segment size', formatBytes(r.segmentSize)],
    ['Created', r.createdAt],
    ['Checkpoint', `${r.checkpoint} at ${r.checkpointTime}`],
    [
      'Segments',
      r.uncommittedSegments > 0
        ? `${r.segments} (${r.uncommittedSegments} uncommitted)`
        : String(r.segments),
    ],
    [
      'Checkpoints',
      r.oldestCheckpoint === undefined
        ? String(r.checkpoints)
        : `${r.checkpoints} (oldest ${r.oldestCheckpoint})`,
    ],
    [
      'Snapshots',
      r.clonePins > 0
        ? `${r.snapshots} (and ${r.clonePins} pinned by clones)`
        : String(r.snapshots),
    ],
    ['Provisioned', bytesWithExact(r.provisionedBytes)],
    [
      'Used',
      `${bytesWithExact(r.usedBytes)}, ${percent(r.usedBytes, r.provisionedBytes)} (${r.mappedBlocks} blocks)`,
    ],
    ['Stored', bytesWithExact(r.storedBytes)],
    ['Lease', lease],
  ];
  if (r.walUrl !== undefined) rows.push(['WAL', r.walUrl]);
  if (r.parent !== undefined)
    rows.push(['Clone of', `${r.parent.url} at checkpoint ${r.parent.checkpoint}`]);
  if (r.space !== undefined) {
    const sp = r.space;
    rows.push(['Live', bytesWithExact(sp.liveBytes)]);
    rows.push(['History only', bytesWithExact(sp.historyBytes)]);
    rows.push([
      'Garbage',
      `${bytesWithExact(sp.garbageBytes)}${sp.garbageBytes > 0.15 * r.storedBytes ? ` (run \`hyper compact\`: it deletes what has been unreachable for its --grace period, ${formatDuration(DEFAULT_GRACE_MS)} by default; --grace 0s deletes it now if no reader still uses older checkpoints)` : ''}`,
    ]);
    if (sp.inheritedBytes > 0) rows.push(['Read from parent', bytesWithExact(sp.inheritedBytes)]);
  }
  return table(rows);
}

function renderLease(lease: LeaseSummary | null): string {
  if (!lease) return 'none';
  const who = `${lease.holder}, epoch ${lease.epoch}`;
  if (lease.live) return `held by ${who}, expires ${lease.expiresAt}`;
  // A cleanly closed writer leaves its lease expired at the epoch (time 0).
  if (Date.parse(lease.expiresAt) <= 0) return `free (last released by ${who})`;
  return `free (expired ${lease.expiresAt}, was ${who})`;
}
