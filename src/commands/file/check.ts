import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { formatBytes } from '../../cli/units.js';
import { progress, volumeUrl } from '../../flags.js';
import type { FileCheckResult } from '../../cli/vocabulary.js';
import { checkVolume, type CheckResult } from '../../format/volume/check.js';

export type { FileCheckResult };

/** The --json result: the library's check report in the JSON vocabulary. */
export function toCheckResult(r: CheckResult): FileCheckResult {
  return {
    url: r.url,
    clean: r.clean,
    deep: r.deep,
    checkpoint: r.checkpoint,
    checkedCheckpointCount: r.checkpointsChecked,
    segmentCount: r.segments,
    checkedNodeCount: r.nodesChecked,
    checkedBlockCount: r.blocksChecked,
    verifiedBytes: r.bytesVerified,
    problems: r.problems.map((p) => ({ kind: p.kind, key: p.key, message: p.message })),
    restoreCheckpoint: r.restoreCheckpoint,
    unreplayableWalRecordCount: r.unreplayableWalRecords,
  };
}

/**
 * What to do about damage: cut the write-ahead log where it breaks, and restore the newest
 * retained checkpoint that uses no damaged object, if one does.
 */
export function restoreAdvice(r: CheckResult): string {
  if (r.problems.some((p) => p.key === 'head' && (p.kind === 'corrupt' || p.kind === 'missing')))
    return `The head is damaged: rebuild it with \`hyper file repair ${r.url}\` (a dry run; add --apply).`;
  const lines: string[] = [];
  const n = r.unreplayableWalRecords;
  if (n > 0)
    lines.push(
      `The write-ahead log cannot be replayed whole, so the volume does not open for writing: \`hyper file repair ${r.url}\` shows the ${n} record${n === 1 ? '' : 's'} that --apply drops (their writes are lost).`,
    );
  // The log's damage is one problem (its first record that cannot be replayed).
  const damage = r.problems.filter(
    (p) => p.kind === 'missing' || p.kind === 'corrupt' || p.kind === 'dangling',
  ).length;
  if (damage > (n > 0 ? 1 : 0)) {
    if (r.restoreCheckpoint === null)
      lines.push(
        'No retained checkpoint is free of the damaged objects: restore the data from a backup, or export what still reads.',
      );
    else if (r.restoreCheckpoint === r.checkpoint)
      lines.push(
        `The current checkpoint ${r.checkpoint} does not use the damaged objects: only older checkpoints are affected.`,
      );
    else
      lines.push(
        `Checkpoint ${r.restoreCheckpoint} is the newest that does not use the damaged objects: restore it with \`hyper snapshot restore ${r.url} --to ${r.restoreCheckpoint}\`.`,
      );
  }
  return lines.join('\n');
}

/** Exit code of `file check` on a damaged volume: the "data" code of the exit-code table. */
export const EXIT_DAMAGED = 6;

export default class FileCheck extends BaseCommand<typeof FileCheck> {
  static override summary = 'Verify a volume against its checksums, without changing anything.';

  static override description = `Reads the head, the lease, snapshot and pin records, the write-ahead log past the head (every record the next writer replays), the segment header of every retained checkpoint and every index node those checkpoints reach, and checks each against its checksum. With --deep it also reads and verifies every data block. Missing and damaged objects are listed by key; segments no checkpoint reaches (garbage that compaction removes), flushes that never committed and pins of clones that no longer exist ("hyper snapshot unpin" releases them) are listed too but are not damage. Like \`qemu-img check\` or \`fsck -n\`, it never writes. Exit code 0: clean; 6: damaged.`;

  static override examples = [
    {
      description: 'Check the index and headers.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/',
    },
    {
      description: 'Also read and verify every data block, as JSON.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --deep --json',
    },
  ];

  static override args = { url: volumeUrl({ required: true }) };

  static override flags = {
    deep: Flags.boolean({ description: 'Also read and verify every data block.', default: false }),
    progress,
  };

  public async run(): Promise<FileCheckResult> {
    const { url } = this.args;
    const store = await this.openStore(url);
    const spinner = this.spinner('Checking…');
    const report = this.progress(spinner);
    const signal = this.interruptible();
    const r = await checkVolume(store, {
      deep: this.flags.deep,
      signal,
      openStore: (u) => this.openStore(u),
      onProgress: (phase, done, total) => {
        const unit =
          phase === 'headers' ? 'checkpoints' : phase === 'index' ? 'indexes' : 'segments';
        report.update(`Checking ${phase}`, {
          done,
          ...(total === undefined ? {} : { total }),
          unit,
        });
      },
    });
    report.finish();
    spinner.stop();
    if (!r.clean) process.exitCode = EXIT_DAMAGED;
    const damage = r.problems.filter(
      (p) => p.kind === 'missing' || p.kind === 'corrupt' || p.kind === 'dangling',
    );
    const lines = [
      `${r.clean ? this.paint('green', 'Clean') : this.paint('red', 'DAMAGED')}: ${r.url} at checkpoint ${r.checkpoint}`,
      `Checked ${r.checkpointsChecked} checkpoint(s), ${r.segments} segment(s), ${r.nodesChecked} index node(s)` +
        (r.deep ? `, ${r.blocksChecked} data block(s) (${formatBytes(r.bytesVerified)})` : ''),
    ];
    if (r.problems.length > 0) {
      lines.push(
        this.table(
          ['Problem', 'Object', 'Detail'],
          r.problems.map((p) => [p.kind, p.key, p.message]),
        ),
      );
    }
    if (damage.length > 0) lines.push(restoreAdvice(r));
    this.log(lines.join('\n'));
    return toCheckResult(r);
  }
}
