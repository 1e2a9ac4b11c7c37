import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import {
  CHECKPOINT_REF_FORMS,
  checkpointRefJson,
  describeCheckpointRef,
} from '../../cli/checkpoint-ref.js';
import { bytesWithExact, requestStats, toVolumeSummary } from '../../cli/results.js';
import type { SnapshotCloneResult } from '../../cli/vocabulary.js';
import { normalizeVolumeUrl } from '../../cli/url.js';
import { checkpointRef, volumeUrl } from '../../flags.js';
import { cloneVolume } from '../../format/volume/clone.js';
import type { CheckpointRef } from '../../format/volume/types.js';
import { readHead } from '../../format/volume/heads.js';

export type { SnapshotCloneResult };

export default class SnapshotClone extends BaseCommand<typeof SnapshotClone> {
  static override summary = 'Make a new volume that starts from a checkpoint of another.';

  static override description = `The clone is an ordinary writable volume whose first checkpoint has the content of the --from checkpoint of the parent (default: its current checkpoint). Nothing is copied: the clone reads the parent's segments for the data it has not rewritten, and writes only its own. The parent keeps that checkpoint pinned, so compacting the parent never removes what the clone reads, whatever its retention policy.

--flatten (or "hyper snapshot flatten" later) copies what the clone still reads from the parent into the clone and releases the pin, making the clone independent; it drops the clone's history from before the flatten.

--from takes ${CHECKPOINT_REF_FORMS}. The clone URL must not hold a volume (VOLUME_EXISTS, exit code 4). The parent's lease is not taken: cloning a served volume is safe, and clones its last committed checkpoint.`;

  static override examples = [
    {
      description: 'Clone a named snapshot into a new volume.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/golden/ --from v1 file://./vols/vm7/',
    },
    {
      description: 'Clone the current checkpoint of a volume into an independent copy.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ s3://my-bucket/vols/vm1-copy/ --flatten',
    },
    {
      description: 'Clone checkpoint 42 and print the result as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/demo/ --from 42 file://./vols/demo-42/ --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true, description: 'URL of the parent volume.' }),
    newUrl: Args.custom<string>({
      description: 'URL of the new volume (the clone).',
      parse: async (input) => normalizeVolumeUrl(input, 'clone URL'),
    })({ required: true }),
  };

  static override flags = {
    from: checkpointRef({
      summary: 'The parent checkpoint to start from (default: the current one).',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
    }),
    flatten: Flags.boolean({
      summary: 'Copy what the clone reads from the parent, making it independent at once.',
    }),
  };

  public async run(): Promise<SnapshotCloneResult> {
    const { url, newUrl } = this.args;
    const from: CheckpointRef | undefined = this.flags.from;
    const parent = await this.openStore(url);
    const child = await this.openStore(newUrl, { mkdir: true });
    const signal = this.interruptible();
    const spinner = this.flags.flatten
      ? this.spinner(`Cloning ${url} into ${newUrl} and flattening`)
      : undefined;
    let r;
    try {
      const at = from ?? { checkpoint: (await readHead(parent)).head.checkpoint };
      r = await cloneVolume(parent, at, child, {
        flatten: this.flags.flatten,
        openStore: (u) => this.openStore(u),
        signal,
      });
    } finally {
      spinner?.stop();
    }
    const result: SnapshotCloneResult = {
      url,
      from: from ? checkpointRefJson(from) : { checkpoint: r.checkpoint },
      checkpoint: r.checkpoint,
      clone: toVolumeSummary(r.clone),
      flattened: r.flattened
        ? {
            copiedBlockCount: r.flattened.blocksCopied,
            copiedBytes: r.flattened.bytesCopied,
            checkpoint: r.flattened.checkpoint,
          }
        : null,
      requests: requestStats(parent, child),
    };
    const via = from && !('checkpoint' in from) ? ` (${describeCheckpointRef(from)})` : '';
    this.log(
      `Cloned ${url} checkpoint ${result.checkpoint}${via} into ${newUrl} (${bytesWithExact(result.clone.size)}).` +
        (result.flattened
          ? ` Flattened: copied ${bytesWithExact(result.flattened.copiedBytes)}; the clone no longer reads from ${url}.`
          : ` It reads unchanged data from ${url}, which keeps checkpoint ${result.checkpoint} pinned until the clone is flattened or deleted.`),
    );
    return result;
  }
}
