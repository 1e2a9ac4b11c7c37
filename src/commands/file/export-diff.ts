import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, diffStreamFields, secondsSince } from '../../cli/results.js';
import type { FileExportDiffResult } from '../../cli/vocabulary.js';
import { checkpointRefJson } from '../../cli/checkpoint-ref.js';
import { formatBytes } from '../../cli/units.js';
import { HyperError } from '../../errors.js';
import { CHECKPOINT_REF_FORMS, checkpointRef, progress, volumeUrl } from '../../flags.js';
import {
  exportDiff,
  exportDiffToFile,
  streamSink,
  type ExportDiffResult,
} from '../../format/volume/diff-stream.js';

export type { FileExportDiffResult };

export default class FileExportDiff extends BaseCommand<typeof FileExportDiff> {
  static override summary =
    'Write the blocks that changed between two checkpoints (or all of one) as a diff stream, for import-diff.';

  static override description = `Writes a diff stream: a header naming the volume (its uuid), the --from and --to checkpoints and their sizes, then one record per changed range (its bytes, or only the range when it reads as zeros in --to), then an end record with the counts and a SHA-256 of the whole stream. Every record carries its own CRC32C. Only the changed ranges are read (as "hyper snapshot diff" lists them), from --to opened read-only, in chunks of at most 4 MiB: nothing is written to the store, and memory stays bounded whatever the size of the change.

Apply the stream to a copy of the volume with "hyper file import-diff". --from and --to take ${CHECKPOINT_REF_FORMS}; --to defaults to the current checkpoint. Without --from the stream is full: from checkpoint 0 (an empty volume), it holds every mapped block of --to and applies to a volume that holds no data, which starts a chain of diffs without --assume-base.

The file is written under a temporary name and renamed when complete, so a failed or interrupted export leaves nothing behind; "-" writes the stream to stdout (the summary goes to stderr, and --json is refused).`;

  static override examples = [
    {
      description:
        'All of the current checkpoint, to start a copy that later diffs keep up to date.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ demo-full.diff',
    },
    {
      description: 'The changes since the snapshot "monday", to a file.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/demo/ --from monday demo-monday.diff',
    },
    {
      description: 'Checkpoints 40 to 42, compressed on the fly.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --from 40 --to 42 - | zstd > vm1-40-42.diff.zst',
    },
    {
      description: 'Straight into a copy of the volume on another store.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/demo/ --from 7 - | <%= config.bin %> file import-diff - s3://backup/vols/demo/',
    },
    {
      description: 'Replace an older file and print the result as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/demo/ --from 7 --to 9 demo.diff --overwrite --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
    file: Args.string({
      description: 'File to write the diff stream to, or - for stdout.',
      required: true,
    }),
  };

  static override flags = {
    from: checkpointRef({
      summary:
        'The older checkpoint: the state the target of import-diff must hold (default: nothing, a full stream).',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
    }),
    to: checkpointRef({
      summary: 'The newer checkpoint (default: the current one).',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
    }),
    overwrite: Flags.boolean({ summary: 'Replace the file if it exists.' }),
    progress,
  };

  public async run(): Promise<FileExportDiffResult> {
    const { url, file } = this.args;
    const { from, to } = this.flags;
    const started = performance.now();
    const toStdout = file === '-';
    if (toStdout && this.jsonEnabled()) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        '--json cannot be used with "export-diff … -": stdout carries the diff',
        { suggestion: 'Leave out --json (the summary goes to stderr), or write to a file.' },
      );
    }
    if (toStdout && process.stdout.isTTY) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        'stdout is a terminal: the diff is binary',
        {
          suggestion:
            'Pipe it (… - | hyper file import-diff - URL, or | zstd > FILE) or give a file name.',
        },
      );
    }
    const store = await this.openStore(url);
    const spinner = this.spinner(`Exporting the diff of ${url}`);
    const progress = this.progress(spinner);
    const label = `Exporting changes to ${toStdout ? 'stdout' : file}`;
    const signal = this.interruptible();
    const options = { ...(from ? { from } : {}), ...(to ? { to } : {}), signal };
    const onProgress = (p: { done: number; total?: number }): void =>
      progress.update(label, {
        done: p.done,
        ...(p.total === undefined ? {} : { total: p.total }),
        unit: 'bytes',
      });
    let result: ExportDiffResult;
    if (toStdout) {
      result = await exportDiff(store, options, streamSink(process.stdout), onProgress);
      if (result.interrupted) {
        throw new HyperError(
          'unavailable',
          'ABORTED',
          `Export interrupted after ${bytesWithExact(result.streamBytes)}; stdout got an incomplete diff (import-diff refuses it).`,
        );
      }
    } else {
      result = await exportDiffToFile(
        store,
        file,
        { ...options, overwrite: this.flags.overwrite },
        onProgress,
      );
    }
    progress.finish();
    spinner.stop();

    const out: FileExportDiffResult = {
      url,
      file,
      from: from ? checkpointRefJson(from) : null,
      to: to ? checkpointRefJson(to) : { checkpoint: result.header.toCheckpoint },
      ...diffStreamFields(result),
      elapsedSeconds: secondsSince(started),
    };
    (toStdout ? (m: string) => this.note(m) : (m: string) => this.log(m))(
      `Exported ${out.from === null ? `all of checkpoint ${out.toCheckpoint} of ${url} (a full stream)` : `the changes of ${url} from checkpoint ${out.fromCheckpoint} to checkpoint ${out.toCheckpoint}`} to ${toStdout ? 'stdout' : file}: ` +
        `${out.dataRecordCount} data record${out.dataRecordCount === 1 ? '' : 's'} (${formatBytes(out.dataBytes)}), ` +
        `${out.zeroRecordCount} zero record${out.zeroRecordCount === 1 ? '' : 's'} (${formatBytes(out.zeroBytes)}), ` +
        `${bytesWithExact(out.streamBytes)} in all, ${out.elapsedSeconds.toFixed(1)} s.`,
    );
    return out;
  }
}
