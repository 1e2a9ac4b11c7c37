import { BaseCommand } from '../../base-command.js';
import { CHECKPOINT_REF_FORMS } from '../../cli/checkpoint-ref.js';
import type { ReplicaCheckResult } from '../../cli/vocabulary.js';
import { formatBytes } from '../../cli/units.js';
import { HyperError } from '../../errors.js';
import { checkpointRef, progress } from '../../flags.js';
import { checkPrimary } from '../../replica/admin.js';
import { primaryFile, primaryUuid } from '../../replica/flags.js';

export default class ReplicaCheck extends BaseCommand<typeof ReplicaCheck> {
  static override summary = 'Compare a primary with its replica region by region (SHA-256).';

  static override description = `Hashes every region of the primary and of the replica (its newest checkpoint, or --at) and lists the regions that differ. A region that differs although the primary's dirty bitmap calls it clean is a divergence: the command then fails with REPLICA_DIVERGED (exit 6). Differences in dirty regions are lag, not errors. On a primary being served, differences can be lag anywhere: they are listed, never called divergence. Nothing is written.

--at takes ${CHECKPOINT_REF_FORMS}.`;

  static override examples = [
    {
      description: 'Check a stopped primary against the replica.',
      command: '<%= config.bin %> <%= command.id %> --file /srv/primary.img --uuid 0b9f…',
    },
    {
      description: 'Compare with the replica as it was at a checkpoint, as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> --file /srv/primary.img --uuid 0b9f… --at 120 --json',
    },
  ];

  static override flags = {
    file: primaryFile,
    uuid: primaryUuid,
    at: checkpointRef({
      summary: 'Compare with this replica checkpoint (default: the newest).',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
    }),
    progress,
  };

  public async run(): Promise<ReplicaCheckResult> {
    const f = this.flags;
    const spinner = this.spinner(`Comparing ${f.file} with its replica`);
    const meter = this.progress(spinner);
    const r = await checkPrimary({
      file: f.file,
      uuid: f.uuid,
      ...(f.at ? { at: f.at } : {}),
      openStore: (u, o) => this.openStore(u, o),
      onProgress: (done, total) =>
        meter.update('Comparing regions', { done, total, unit: 'regions' }),
      signal: this.interruptible(),
    });
    meter.finish();
    spinner.stop();
    if (r.differing.length > 0) {
      this.log(
        this.table(
          ['Region', 'Offset', 'Length', 'Dirty'],
          r.differing.map((d) => [
            String(d.region),
            String(d.offset),
            formatBytes(d.length),
            d.dirty ? 'yes' : 'no',
          ]),
        ),
      );
    }
    this.log(
      `${r.matching} of ${r.regions} regions match replica checkpoint ${r.checkpoint}${r.consistent ? '' : ' (not a crash-consistent checkpoint)'}; ${r.differing.length} differ${r.served ? ' (the primary is being served: differences may be lag)' : ''}.`,
    );
    if (r.diverged > 0) {
      throw new HyperError(
        'data',
        'REPLICA_DIVERGED',
        `${r.diverged} region(s) of ${f.file} differ from the replica although the primary calls them clean`,
        {
          suggestion:
            'Copy them again with "hyper replica resync --file PATH --full" (or --control-socket while serving).',
        },
      );
    }
    return r;
  }
}
