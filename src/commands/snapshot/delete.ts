import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { iso } from '../../cli/results.js';
import type { SnapshotDeleteResult } from '../../cli/vocabulary.js';
import { snapshotNameArg, volumeUrl } from '../../flags.js';
import { deleteSnapshot } from '../../format/volume/history.js';

export type { SnapshotDeleteResult };

export default class SnapshotDelete extends BaseCommand<typeof SnapshotDelete> {
  static override summary = 'Remove a named snapshot (unpin its checkpoint).';

  static override description = `Removes the name only: the checkpoint stays readable and restorable until a compaction whose retention policy does not keep it removes it (and the data only it uses). Until then the snapshot can be created again with "hyper snapshot create --at <checkpoint>". A missing name is an error (SNAPSHOT_NOT_FOUND, exit code 3). It does not take the lease, so it is safe while the volume is served.`;

  static override examples = [
    {
      description: 'Remove a snapshot.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ before-upgrade',
    },
    {
      description: 'Remove a snapshot and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ last-good --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
    name: Args.string({ description: 'Name of the snapshot to remove.' }),
  };

  static override flags = {
    name: Flags.string({
      char: 'n',
      summary: 'Name of the snapshot (deprecated: give it as the second argument).',
      helpValue: '<name>',
      deprecated: { message: 'give the name as the second argument: snapshot delete URL NAME' },
    }),
  };

  public async run(): Promise<SnapshotDeleteResult> {
    const { url } = this.args;
    const name = snapshotNameArg(this.args.name, this.flags.name, 'delete', url);
    const store = await this.openStore(url);
    const snap = await deleteSnapshot(store, name);
    const result: SnapshotDeleteResult = {
      url,
      name: snap.name,
      checkpoint: snap.checkpoint,
      createdAt: iso(snap.createdAt),
    };
    this.log(
      `Deleted snapshot "${result.name}" of ${url}; checkpoint ${result.checkpoint} is no longer pinned.`,
    );
    return result;
  }
}
