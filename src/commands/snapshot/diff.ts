import { BaseCommand } from '../../base-command.js';
import { CHECKPOINT_REF_FORMS, checkpointRefJson } from '../../cli/checkpoint-ref.js';
import type { SnapshotDiffResult } from '../../cli/vocabulary.js';
import { bytesWithExact } from '../../cli/results.js';
import { formatBytes } from '../../cli/units.js';
import { checkpointRef, volumeUrl } from '../../flags.js';
import { diffCheckpoints } from '../../format/volume/history.js';
import { readHead, resolveCheckpoint } from '../../format/volume/heads.js';

export type { SnapshotDiffResult };

export default class SnapshotDiff extends BaseCommand<typeof SnapshotDiff> {
  static override summary = 'Show the byte ranges that changed between two checkpoints.';

  static override description = `Compares the indexes of two checkpoints and prints the ranges whose content differs, in whole data blocks, each marked "data" (new content in --to) or "zero" (reads as zeros in --to: trimmed or zeroed). --to defaults to the current checkpoint. Parts of the index the two checkpoints share are skipped without being read, so the cost follows the size of the change, not the size of the volume. Nothing is written.

--from and --to take ${CHECKPOINT_REF_FORMS}.`;

  static override examples = [
    {
      description: 'What changed since a snapshot.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --from before-upgrade',
    },
    {
      description: 'What changed between checkpoints 40 and 42, as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --from 40 --to 42 --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    from: checkpointRef({
      summary: 'The older checkpoint: a number, a snapshot name, or a time.',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
      required: true,
    }),
    to: checkpointRef({
      summary: 'The newer checkpoint (default: the current one).',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
    }),
  };

  public async run(): Promise<SnapshotDiffResult> {
    const { url } = this.args;
    const { from, to } = this.flags;
    const store = await this.openStore(url);
    const { head } = await readHead(store);
    const a = await resolveCheckpoint(store, head, from);
    const b = to ? await resolveCheckpoint(store, head, to) : head.checkpoint;
    const extents = await diffCheckpoints(store, { checkpoint: a }, { checkpoint: b });
    const result: SnapshotDiffResult = {
      url,
      from: checkpointRefJson(from),
      to: to ? checkpointRefJson(to) : { checkpoint: b },
      fromCheckpoint: a,
      toCheckpoint: b,
      extents: extents.map((e) => ({ offset: e.offset, length: e.length, zero: e.zero })),
      changedBytes: extents.reduce((s, e) => s + e.length, 0),
    };
    if (extents.length === 0) {
      this.log(`No changes between checkpoint ${a} and checkpoint ${b} of ${url}.`);
    } else {
      this.log(
        this.table(
          ['Offset', 'Length', 'Type'],
          extents.map((e) => [String(e.offset), formatBytes(e.length), e.zero ? 'zero' : 'data']),
        ),
      );
      this.log(
        `${extents.length} changed extent${extents.length === 1 ? '' : 's'}, ${bytesWithExact(result.changedBytes)}, from checkpoint ${a} to checkpoint ${b}.`,
      );
    }
    return result;
  }
}
