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
  };
}

export default class FileRepair extends BaseCommand<typeof FileRepair> {
  static override summary = 'Rebuild a damaged or missing head from the newest intact checkpoint.';

  static override description = `Every segment embeds the head of the checkpoint it commits. When the \`head\` object is damaged or missing, this finds the newest segment that verifies completely (its header, every index node its checkpoint reaches, the data blocks it holds, and the presence of every segment it uses), skipping and naming newer ones that do not, and writes its head back. Without --apply it only says what it would write. The head is written with a create-only PUT when missing and a compare-and-swap on the damaged object otherwise, so a writer committing meanwhile is never overwritten. A volume whose head is intact has nothing to repair (exit 0). Run \`hyper file check --deep\` afterwards.`;

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
    apply: Flags.boolean({ summary: 'Write the rebuilt head (without it: a dry run).' }),
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
      lines.push(`Nothing to repair: the head of ${r.url} is intact (${at}).`);
    } else if (r.applied) {
      lines.push(`Rebuilt the ${r.head} head of ${r.url}: ${at}, from ${r.segmentKey}.`);
      lines.push(`Verify the volume with \`${this.config.bin} file check --deep ${r.url}\`.`);
    } else {
      lines.push(
        `The head of ${r.url} is ${r.head}. Would write the head of ${at}, from ${r.segmentKey}.`,
      );
      lines.push(`Write it with \`${this.config.bin} file repair ${r.url} --apply\`.`);
    }
    this.log(lines.join('\n'));
    return toRepairResult(r);
  }
}
