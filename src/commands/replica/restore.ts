import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { CHECKPOINT_REF_FORMS } from '../../cli/checkpoint-ref.js';
import type { ReplicaRestoreResult } from '../../cli/vocabulary.js';
import { checkpointRef, progress } from '../../flags.js';
import { restorePrimary } from '../../replica/admin.js';
import { primaryFile } from '../../replica/flags.js';

export default class ReplicaRestore extends BaseCommand<typeof ReplicaRestore> {
  static override summary =
    'Restore a primary from a replica checkpoint, at once or lazily while serving.';

  static override description = `Rolls the replica volume back to the checkpoint (a new checkpoint with its content; history is kept) and copies it to the primary region by region, then leaves the primary ready to serve in logging mode. With --lazy the command returns at once: "replica serve" makes the primary usable immediately, fetches a region from the replica on its first read or write, and restores the rest in the background (progress in "replica status"). An interrupted restore resumes where it stopped: run the command again without --to (or serve, which finishes it lazily). A fresh file or device needs --replica (the prefix) and --uuid. Refused, with nothing written: a primary being served (PRIMARY_IN_USE), a wrong --uuid, a replica of another device (REPLICA_MISMATCH), a checkpoint committed during a resync (not crash-consistent).

--to takes ${CHECKPOINT_REF_FORMS}.`;

  static override examples = [
    {
      description: 'Restore the primary to how it was an hour ago.',
      command: '<%= config.bin %> <%= command.id %> --file /dev/nvme1n1 --uuid 0b9f… --to 1h',
    },
    {
      description: 'Restore a new machine lazily from the replica, then serve at once.',
      command:
        '<%= config.bin %> <%= command.id %> --file /dev/nvme1n1 --uuid 0b9f… --replica s3://bkt/replicas/ --to 2026-11-30T08:00:00Z --lazy',
    },
  ];

  static override flags = {
    file: primaryFile,
    uuid: Flags.string({
      summary: "The primary's uuid (the replica volume is named by it).",
      helpValue: '<uuid>',
      required: true,
    }),
    to: checkpointRef({
      summary: 'The replica checkpoint to restore (leave out to resume an interrupted restore).',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
    }),
    lazy: Flags.boolean({
      summary:
        'Return at once; "replica serve" restores regions on first use and in the background.',
    }),
    replica: Flags.string({
      summary: 'Replica prefix URL, for a primary with no header (a new file or device).',
      helpValue: '<url>',
    }),
    'recover-concurrency': Flags.integer({
      summary: 'Regions copied at once.',
      default: 4,
      min: 1,
      max: 64,
    }),
    force: Flags.boolean({
      summary: 'Restore even if the header names a replicator that may still be running elsewhere.',
    }),
    progress,
  };

  public async run(): Promise<ReplicaRestoreResult> {
    const f = this.flags;
    const spinner = this.spinner(`Restoring ${f.file}`);
    const meter = this.progress(spinner);
    const r = await restorePrimary({
      file: f.file,
      uuid: f.uuid,
      ...(f.to ? { to: f.to } : {}),
      lazy: f.lazy,
      ...(f.replica ? { replicaPrefix: f.replica } : {}),
      force: f.force,
      concurrency: f['recover-concurrency'],
      openStore: (u, o) => this.openStore(u, o),
      onProgress: (done, total) =>
        meter.update('Restoring regions', { done, total, unit: 'regions' }),
      signal: this.interruptible(),
    });
    meter.finish();
    spinner.stop();
    this.log(
      r.lazy
        ? `${f.file} will be restored from replica checkpoint ${r.replicaCheckpoint} (the content of checkpoint ${r.checkpoint}) while "replica serve" runs; ${r.restoredRegions} of ${r.regions} regions done.`
        : `Restored ${f.file} to replica checkpoint ${r.checkpoint} (${r.regions} regions); the replica now holds the same content as checkpoint ${r.replicaCheckpoint}.`,
    );
    return r;
  }
}
