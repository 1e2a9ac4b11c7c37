import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import type { ReplicaResyncResult } from '../../cli/vocabulary.js';
import { markResync } from '../../replica/admin.js';
import { liveOrFile, primaryUuid } from '../../replica/flags.js';
import { replicaClient } from '../../replica/serve.js';

export default class ReplicaResync extends BaseCommand<typeof ReplicaResync> {
  static override summary =
    'Copy the dirty regions (or, with --full, every region) to the replica again.';

  static override description = `With --control-socket, the running replicator starts a resync pass at once: the checkpoints it commits until the pass ends are not crash-consistent, and status names the last one that is. With --file (the primary not being served), --full is recorded in the primary's header so that the next "replica serve" copies every region; without --full the dirty regions are resynced at the next start anyway.`;

  static override examples = [
    {
      description: 'Resync everything now.',
      command:
        '<%= config.bin %> <%= command.id %> --control-socket /run/hyper/replica.sock --full',
    },
    {
      description: 'Have the next serve copy every region.',
      command: '<%= config.bin %> <%= command.id %> --file /srv/primary.img --full --json',
    },
  ];

  static override flags = {
    ...liveOrFile,
    uuid: primaryUuid,
    full: Flags.boolean({ summary: 'Copy every region, not only the dirty ones.' }),
  };

  public async run(): Promise<ReplicaResyncResult> {
    const f = this.flags;
    const live = f['control-socket'] !== undefined;
    const { regions } = live
      ? await replicaClient(f['control-socket']!).post<{ regions: number }>('/v1/replica/resync', {
          full: f.full,
        })
      : await markResync(f.file!, f.uuid, f.full);
    this.log(
      live
        ? `Resyncing ${regions} region${regions === 1 ? '' : 's'}.`
        : `The next "replica serve" resyncs ${regions} region${regions === 1 ? '' : 's'}.`,
    );
    return { regions, full: f.full, live };
  }
}
