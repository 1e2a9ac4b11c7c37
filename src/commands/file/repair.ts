import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { isoOrNull } from '../../cli/results.js';
import type { FileRepairResult } from '../../cli/vocabulary.js';
import { volumeUrl } from '../../flags.js';
import { repairHead, type RepairResult } from '../../format/volume/repair.js';

export type { FileRepairResult };

export function toRepairResult(r: RepairResult): FileRepairResult {
  return {
    url: r.url,
    head: r.head,
    applied: r.applied,
    checkpoint: r.checkpoint,
    checkpointTime: r.checkpointTime ? isoOrNull(r.checkpointTime) : null,
    segmentKey: r.segmentKey,
    skippedSegments: r.skipped.map((s) => ({ key: s.key, message: s.message })),
    wal:
      r.wal === null
        ? null
        : {
            url: r.wal.url,
            replayableRecordCount: r.wal.replayable,
            damaged: r.wal.bad,
            droppedRecords: r.wal.dropped,
            applied: r.wal.applied,
          },
  };
}

export default class FileRepair extends BaseCommand<typeof FileRepair> {
  static override summary =
    'Rebuild a damaged or missing head from the newest intact checkpoint; cut a damaged write-ahead log.';

  static override description = `Every segment embeds the head of the checkpoint it commits. When the \`head\` object is damaged or missing, this finds the newest segment that verifies completely (its header, every index node its checkpoint reaches, the data blocks it holds, and the presence of every segment it uses), skipping and naming newer ones that do not, and writes its head back. Without --apply it only says what it would write. The head is written with a create-only PUT when missing and a compare-and-swap on the damaged object otherwise, so a writer committing meanwhile is never overwritten. A volume whose head is intact has nothing to repair (exit 0). With a write-ahead log, every record past the head must replay in order for a writer to open; where one is damaged or missing, --apply drops it and every record after it (their writes are lost), so that a writer replays the rest and opens. Run \`hyper file check --deep\` afterwards.`;

  static override examples = [
    {
      description: 'Show what would be written (a dry run).',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/',
    },
    {
      description: 'Write the rebuilt head.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --apply',
    },
  ];

  static override args = { url: volumeUrl({ required: true }) };

  static override flags = {
    apply: Flags.boolean({
      summary: 'Write the rebuilt head and cut a damaged log (without it: a dry run).',
    }),
    force: Flags.boolean({
      summary:
        'Write even though a live lease is held (a writer still running will fail its next commit).',
    }),
  };

  public async run(): Promise<FileRepairResult> {
    const { url } = this.args;
    const store = await this.openStore(url);
    const spinner = this.spinner('Looking for an intact checkpoint…');
    const r = await repairHead(store, {
      apply: this.flags.apply,
      force: this.flags.force,
      signal: this.interruptible(),
      openStore: (u) => this.openStore(u),
    });
    spinner.stop();
    const lines: string[] = [];
    for (const s of r.skipped) lines.push(`Skipped ${s.key}: ${s.message}`);
    const at = `checkpoint ${r.checkpoint} of ${r.checkpointTime?.toISOString()}`;
    if (r.head === 'intact') {
      lines.push(
        r.wal?.bad
          ? `The head of ${r.url} is intact (${at}).`
          : `Nothing to repair: the head of ${r.url} is intact (${at}).`,
      );
    } else if (r.applied) {
      lines.push(`Rebuilt the ${r.head} head of ${r.url}: ${at}, from ${r.segmentKey}.`);
      lines.push(`Verify the volume with \`${this.config.bin} file check --deep ${r.url}\`.`);
    } else {
      lines.push(
        `The head of ${r.url} is ${r.head}. Would write the head of ${at}, from ${r.segmentKey}.`,
      );
      lines.push(`Write it with \`${this.config.bin} file repair ${r.url} --apply\`.`);
    }
    const w = r.wal;
    if (w?.bad) {
      const n = w.dropped.length;
      const records = `${n} record${n === 1 ? '' : 's'} (${w.dropped[0]}–${w.dropped[n - 1]})`;
      lines.push(`Write-ahead log ${w.url}: ${w.bad.message}`);
      if (w.applied) {
        lines.push(
          `Dropped ${records} from the log: a writer now replays the ${w.replayable} record${w.replayable === 1 ? '' : 's'} before them and opens.`,
        );
      } else {
        lines.push(
          `No writer can open the volume until the log is cut there. --apply drops ${records} and the writes they hold; a writer then replays the ${w.replayable} before them.`,
        );
      }
    } else if (w) {
      lines.push(
        `The write-ahead log replays whole (${w.replayable} record${w.replayable === 1 ? '' : 's'} past the head).`,
      );
    }
    this.log(lines.join('\n'));
    return toRepairResult(r);
  }
}
