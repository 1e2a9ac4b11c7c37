import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { iso } from '../../cli/results.js';
import type { SnapshotListItem, SnapshotListResult } from '../../cli/vocabulary.js';
import { formatBytes } from '../../cli/units.js';
import { time, volumeUrl } from '../../flags.js';
import { listCheckpoints } from '../../format/volume/history.js';

export type { SnapshotListItem, SnapshotListResult };

export default class SnapshotList extends BaseCommand<typeof SnapshotList> {
  static override summary = 'List the checkpoints of a volume, newest first, with their names.';

  static override description = `Every flush of a volume commits a checkpoint, and every checkpoint that compaction kept can be restored, exported or pinned. The list shows, newest first, each checkpoint's number and time, the named snapshots that pin it, the bytes its flush wrote, and markers: "current" for the checkpoint the volume is at, "restored from N" for checkpoints made by "hyper snapshot restore".

--named shows only checkpoints with a name; --since, --until and --limit narrow long histories (each shown checkpoint costs one small read). Nothing is written.`;

  static override examples = [
    {
      description: 'List every checkpoint.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/',
    },
    {
      description: 'List only the named snapshots.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --named',
    },
    {
      description: 'The last 10 checkpoints of the past day, as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/demo/ --since 1d --limit 10 --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    named: Flags.boolean({ summary: 'Only checkpoints pinned by a named snapshot.' }),
    since: time({ summary: 'Only checkpoints made at or after this time (ISO-8601, or e.g. 2h).' }),
    until: time({
      summary: 'Only checkpoints made at or before this time (ISO-8601, or e.g. 2h).',
    }),
    limit: Flags.integer({
      summary: 'Show at most this many checkpoints (the newest).',
      min: 1,
      helpValue: '<n>',
    }),
  };

  public async run(): Promise<SnapshotListResult> {
    const { url } = this.args;
    const { named, since, until, limit } = this.flags;
    const store = await this.openStore(url);
    const entries = await listCheckpoints(store, {
      named,
      ...(since ? { since } : {}),
      ...(until ? { until } : {}),
      ...(limit === undefined ? {} : { limit }),
    });
    const result: SnapshotListResult = {
      url,
      checkpoints: entries.map((e) => ({
        checkpoint: e.checkpoint,
        time: iso(e.time),
        names: e.names,
        writtenBytes: e.bytes,
        current: e.current,
        restoredFrom: e.restoredFrom ?? null,
        cloneUrls: e.clones,
      })),
    };
    if (result.checkpoints.length === 0) {
      this.log(named ? `${url} has no named snapshots.` : `No checkpoints of ${url} match.`);
    } else {
      this.log(
        this.table(
          ['Checkpoint', 'Time', 'Name', 'Written', 'Note'],
          result.checkpoints.map((c) => [
            String(c.checkpoint),
            c.time,
            c.names.join(', '),
            formatBytes(c.writtenBytes),
            noteOf(c),
          ]),
        ),
      );
    }
    return result;
  }
}

function noteOf(c: SnapshotListItem): string {
  const notes: string[] = [];
  if (c.current) notes.push('current');
  if (c.restoredFrom !== null) notes.push(`restored from ${c.restoredFrom}`);
  for (const u of c.cloneUrls) notes.push(`pinned by clone ${u}`);
  return notes.join(', ');
}
