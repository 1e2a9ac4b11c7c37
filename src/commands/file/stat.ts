import { DEFAULT_GRACE_MS } from '../../format/volume/compact.js';
import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, isoOrNull, percent, toVolumeSummary } from '../../cli/results.js';
import type { FileStatResult, LeaseSummary } from '../../cli/vocabulary.js';
import { formatDuration, formatBytes } from '../../cli/units.js';
import { volumeUrl } from '../../flags.js';
import { statVolume, type VolumeStat } from '../../format/volume/admin.js';
import { Flags } from '@oclif/core';

export type { FileStatResult, LeaseSummary };

export function toStatResult(st: VolumeStat, url: string): FileStatResult {
  return {
    ...toVolumeSummary({ ...st, url: st.url || url }),
    mappedBlockCount: st.mappedBlocks,
    distinctBlockCount: st.dedupBlocks ?? null,
    segmentCount: st.segments,
    uncommittedSegmentCount: st.uncommittedSegments,
    storedBytes: st.storedBytes,
    provisionedBytes: st.provisionedBytes,
    usedBytes: st.usedBytes,
    snapshotCount: st.snapshots,
    lease: st.lease ? toLeaseSummary(st.lease) : null,
    walUrl: st.walUrl ?? null,
    checkpointCount: st.checkpoints,
    oldestCheckpoint: st.oldestCheckpoint ?? null,
    clonePinCount: st.clonePins,
    parent: st.parent ? { url: st.parent.url, checkpoint: st.parent.checkpoint } : null,
    unfinishedFlatten: st.unfinishedFlatten ?? null,
    space: st.space
      ? {
          liveBytes: st.space.liveBytes,
          deadBytes: st.space.deadBytes,
          historyBytes: st.space.historyBytes,
          garbageBytes: st.space.garbageBytes,
          inheritedBytes: st.space.inheritedBytes,
        }
      : null,
  };
}

/** A cleanly closed writer leaves its lease expired at the epoch (time 0): "released". */
function toLeaseSummary(lease: NonNullable<VolumeStat['lease']>): LeaseSummary {
  const expiresAt = isoOrNull(lease.expiresAt);
  return {
    holder: lease.holder,
    epoch: lease.epoch,
    state: lease.live ? 'live' : expiresAt === null ? 'released' : 'expired',
    expiresAt,
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
        'Also split stored bytes into live (the current checkpoint), dead in live segments (what it replaced in the segments it reads from), history (segments only older checkpoints need) and garbage (what compaction deletes); reads the retained indexes.',
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
    ['Compression', r.compression],
    ['Encryption', r.keyId === null ? r.encryption : `${r.encryption} (key ${r.keyId})`],
    [
      'Deduplication',
      r.distinctBlockCount === null
        ? 'off'
        : `on (${r.distinctBlockCount} distinct blocks indexed for ${r.mappedBlockCount} mapped)`,
    ],
    ['Size', bytesWithExact(r.size)],
    ['Data block size', formatBytes(r.dataBlockSize)],
    ['Metadata block size', formatBytes(r.metaBlockSize)],
    ['Segment size', formatBytes(r.segmentSize)],
    ['Created', r.createdAt],
    ['Checkpoint', `${r.checkpoint} at ${r.checkpointTime}`],
    [
      'Segments',
      r.uncommittedSegmentCount > 0
        ? `${r.segmentCount} (${r.uncommittedSegmentCount} uncommitted)`
        : String(r.segmentCount),
    ],
    [
      'Checkpoints',
      r.oldestCheckpoint === null
        ? String(r.checkpointCount)
        : `${r.checkpointCount} (oldest ${r.oldestCheckpoint})`,
    ],
    [
      'Snapshots',
      r.clonePinCount > 0
        ? `${r.snapshotCount} (and ${r.clonePinCount} pinned by clones)`
        : String(r.snapshotCount),
    ],
    ['Provisioned', bytesWithExact(r.provisionedBytes)],
    [
      'Used',
      `${bytesWithExact(r.usedBytes)}, ${percent(r.usedBytes, r.provisionedBytes)} (${r.mappedBlockCount} blocks)`,
    ],
    ['Stored', bytesWithExact(r.storedBytes)],
    ['Lease', lease],
  ];
  if (r.walUrl !== null) rows.push(['WAL', r.walUrl]);
  if (r.parent !== null)
    rows.push(['Clone of', `${r.parent.url} at checkpoint ${r.parent.checkpoint}`]);
  if (r.unfinishedFlatten !== null)
    rows.push([
      'Unfinished flatten',
      `stopped after dropping the link to ${r.unfinishedFlatten.url} (its checkpoint ${r.unfinishedFlatten.checkpoint} stays pinned): run \`hyper snapshot flatten ${r.url}\``,
    ]);
  if (r.space !== null) {
    const sp = r.space;
    rows.push(['Live', bytesWithExact(sp.liveBytes)]);
    rows.push(['Dead in live segments', bytesWithExact(sp.deadBytes)]);
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
  if (lease.state === 'live') return `held by ${who}, expires ${lease.expiresAt}`;
  if (lease.state === 'released') return `free (last released by ${who})`;
  return `free (expired ${lease.expiresAt}, was ${who})`;
}
