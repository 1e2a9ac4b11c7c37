import { BaseCommand } from '../../base-command.js';
import type { ReplicaStatusResult } from '../../cli/vocabulary.js';
import { formatBytes } from '../../cli/units.js';
import { offlineStatus, openPrimary } from '../../replica/admin.js';
import { replicaClient } from '../../replica/serve.js';
import { liveOrFile, primaryUuid } from '../../replica/flags.js';

export default class ReplicaStatus extends BaseCommand<typeof ReplicaStatus> {
  static override summary = "Show a replicated primary's mode, lag and resync or restore progress.";

  static override description = `With --control-socket, asks the running "hyper replica serve": mode (logging, forward-part, forward-full, reverse-full), replication lag (bytes, requests and seconds not yet committed on the replica: the recovery point), the newest replica checkpoint and the last crash-consistent one, dirty regions, resync and restore progress, and throughput. With --file, reads the primary's header instead (nothing running needed): mode, dirty regions, and the checkpoints it recorded.`;

  static override examples = [
    {
      description: 'Status of a running replicator.',
      command: '<%= config.bin %> <%= command.id %> --control-socket /run/hyper/replica.sock',
    },
    {
      description: "What a stopped primary's header says, as JSON.",
      command: '<%= config.bin %> <%= command.id %> --file /srv/primary.img --json',
    },
  ];

  static override flags = {
    ...liveOrFile,
    uuid: primaryUuid,
  };

  public async run(): Promise<ReplicaStatusResult> {
    const f = this.flags;
    let s: ReplicaStatusResult;
    if (f['control-socket'] !== undefined) {
      s = await replicaClient(f['control-socket']).get<ReplicaStatusResult>('/v1/replica');
    } else {
      const { primary, header } = await openPrimary(f.file!, f.uuid, { readOnly: true });
      await primary.close();
      s = offlineStatus(header);
    }
    const rows: [string, string][] = [
      ['UUID', s.uuid],
      ['Mode', s.mode],
      [
        'Device',
        `${formatBytes(s.deviceSize)} in ${s.regions} regions of ${formatBytes(s.regionSize)}`,
      ],
      ['Replica', s.replicaUrl],
      ['Replica checkpoint', String(s.replica.checkpoint)],
      [
        'Last consistent',
        `${s.replica.lastConsistentCheckpoint}${s.replica.lastConsistentTime ? ` (${s.replica.lastConsistentTime})` : ''}`,
      ],
      ['Dirty regions', String(s.dirtyRegions)],
    ];
    if (s.live) {
      rows.push(
        [
          'Connected',
          s.replica.connected ? 'yes' : `no${s.replica.error ? ` (${s.replica.error})` : ''}`,
        ],
        [
          'Commit',
          s.replica.commitSeconds === null
            ? 'none in flight'
            : `in flight for ${s.replica.commitSeconds.toFixed(1)} s`,
        ],
        [
          'Lag',
          `${formatBytes(s.lag.bytes)}, ${s.lag.ios} requests, ${s.lag.seconds.toFixed(1)} s (p50 ${s.lag.p50Seconds.toFixed(2)} s, p99 ${s.lag.p99Seconds.toFixed(2)} s)`,
        ],
        [
          'Pool',
          `${formatBytes(s.pool.bytes)} of ${formatBytes(s.pool.limit)}, ${s.pool.overflows} overflows`,
        ],
        [
          'Shipped',
          `${formatBytes(s.shipped.bytes)} in ${s.shipped.ios} requests, ${s.shipped.checkpoints} checkpoints, ${formatBytes(s.shipped.bytesPerSecond)}/s`,
        ],
      );
    }
    if (s.resync)
      rows.push([
        'Resync',
        `${s.resync.copied} of ${s.resync.total} regions copied, ${s.resync.pending} pending`,
      ]);
    if (s.restore)
      rows.push([
        'Restore',
        `${s.restore.restored} of ${s.restore.total} regions from checkpoint ${s.restore.from}${s.restore.lazy ? ' (lazy)' : ''}`,
      ]);
    this.log(this.keyValueTable(rows));
    return s;
  }
}
