import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import {
  CHECKPOINT_REF_FORMS,
  checkpointRefJson,
  describeCheckpointRef,
} from '../../cli/checkpoint-ref.js';
import { iso, requestStats } from '../../cli/results.js';
import type { SnapshotCreateResult } from '../../cli/vocabulary.js';
import { checkpointRef, volumeUrl } from '../../flags.js';
import { createSnapshot } from '../../format/volume/history.js';

export type { SnapshotCreateResult };

export default class SnapshotCreate extends BaseCommand<typeof SnapshotCreate> {
  static override summary = 'Pin a checkpoint under a name.';

  static override description = `Every checkpoint of a volume can be restored or read as long as compaction keeps it; a named snapshot pins one so that compaction always keeps it, whatever the retention policy. By default the current checkpoint is pinned; --at pins an earlier one.

Creating a snapshot copies no data and takes a fixed, small number of requests whatever the size of the volume. It does not take the lease, so it is safe while the volume is served: the snapshot pins the last committed checkpoint (data not yet flushed by a running writer is not in it). Names are 1-64 letters, digits, ".", "_" or "-"; an existing name is refused (exit code 4).`;

  static override examples = [
    {
      description: 'Pin the current checkpoint.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --name before-upgrade',
    },
    {
      description: 'Pin the volume as it was two hours ago.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --name last-good --at 2h',
    },
    {
      description: 'Pin checkpoint 42 and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --name cp42 --at 42 --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    name: Flags.string({
      char: 'n',
      summary: 'Name of the snapshot.',
      required: true,
      helpValue: '<name>',
    }),
    at: checkpointRef({
      summary: 'Pin this checkpoint instead of the current one.',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
    }),
  };

  public async run(): Promise<SnapshotCreateResult> {
    const { url } = this.args;
    const at = this.flags.at;
    const store = await this.openStore(url);
    const snap = await createSnapshot(store, this.flags.name, at);
    const result: SnapshotCreateResult = {
      url,
      name: snap.name,
      checkpoint: snap.checkpoint,
      createdAt: iso(snap.createdAt),
      at: at ? checkpointRefJson(at) : null,
      requests: requestStats(store),
    };
    this.log(
      `Created snapshot "${result.name}" of ${url} at checkpoint ${result.checkpoint}` +
        `${at ? ` (${describeCheckpointRef(at)})` : ''}.`,
    );
    return result;
  }
}
