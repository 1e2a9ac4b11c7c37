import { hostname } from 'node:os';
import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import {
  CHECKPOINT_REF_FORMS,
  checkpointRefJson,
  describeCheckpointRef,
} from '../../cli/checkpoint-ref.js';
import { iso, requestStats } from '../../cli/results.js';
import type { SnapshotRestoreResult } from '../../cli/vocabulary.js';
import { checkpointRef, volumeUrl } from '../../flags.js';
import { restoreVolume } from '../../format/volume/history.js';

export type { SnapshotRestoreResult };

export default class SnapshotRestore extends BaseCommand<typeof SnapshotRestore> {
  static override summary = 'Bring a volume back to an earlier checkpoint (undoable).';

  static override description = `Commits a new checkpoint whose content is that of the --to checkpoint: nothing is copied or deleted, and the checkpoints in between stay in the history, so a restore can itself be undone by restoring to the checkpoint it started from (printed as "from"). The cost is a fixed, small number of requests whatever the size of the volume.

--to takes ${CHECKPOINT_REF_FORMS}. A time means the last checkpoint made at or before it.

The restore takes the volume's lease: it refuses while another writer (for example "hyper serve") holds it, naming that writer (LEASE_HELD, exit code 4). Stop the writer first; --force takes the lease over and fences the writer, whose unflushed writes are lost. --dry-run only resolves --to and prints what would happen.`;

  static override examples = [
    {
      description: 'Restore a named snapshot.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --to before-upgrade',
    },
    {
      description: 'See which checkpoint "two hours ago" is, without changing anything.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --to 2h --dry-run',
    },
    {
      description: 'Restore checkpoint 42 and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --to 42 --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    to: checkpointRef({
      summary: 'The checkpoint to restore: a number, a snapshot name, or a time.',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
      required: true,
    }),
    'dry-run': Flags.boolean({ summary: 'Resolve --to and show the plan; change nothing.' }),
    force: Flags.boolean({
      summary:
        "Take the lease even if another writer holds it (that writer's unflushed writes are lost).",
    }),
  };

  public async run(): Promise<SnapshotRestoreResult> {
    const { url } = this.args;
    const { to } = this.flags;
    const dryRun = this.flags['dry-run'];
    const store = await this.openStore(url);
    const plan = await restoreVolume(store, to, {
      dryRun,
      force: this.flags.force,
      holder: `hyper snapshot restore on ${hostname()}:${process.pid}`,
      openStore: (u) => this.openStore(u),
    });
    const result: SnapshotRestoreResult = {
      url,
      to: checkpointRefJson(to),
      targetCheckpoint: plan.target,
      targetTime: iso(plan.targetTime),
      previousCheckpoint: plan.from,
      checkpoint: plan.checkpoint ?? null,
      dryRun: plan.dryRun,
      unchanged: plan.unchanged,
      requests: requestStats(store),
    };
    const what = `checkpoint ${result.targetCheckpoint} (${result.targetTime})`;
    const via = 'checkpoint' in to ? '' : `, ${describeCheckpointRef(to)}`;
    if (result.unchanged) {
      const future =
        'time' in to && to.time.getTime() > Date.now()
          ? ` (${to.time.toISOString()} is in the future)`
          : '';
      this.log(
        `${url} is already at ${what}${via}, its current state${future}: nothing to restore, nothing changed.`,
      );
    } else if (result.dryRun) {
      this.log(
        `Dry run: would restore ${url} to ${what}${via}, from current checkpoint ${result.previousCheckpoint}. Nothing changed.`,
      );
    } else {
      this.log(
        `Restored ${url} to ${what}${via} as new checkpoint ${result.checkpoint}.\n` +
          `To undo: ${this.config.bin} snapshot restore ${url} --to ${result.previousCheckpoint}`,
      );
    }
    return result;
  }
}
