import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, iso, secondsSince } from '../../cli/results.js';
import type { FileExportResult } from '../../cli/vocabulary.js';
import { exportStream, exportToImageFile, withVolume } from '../../cli/transfer.js';
import { HyperError } from '../../errors.js';
import { formatBytes } from '../../cli/units.js';
import { checkpointAt, progress, volumeUrl } from '../../flags.js';
import { checkpointRefJson } from '../../cli/checkpoint-ref.js';

export type { FileExportResult };

export default class FileExport extends BaseCommand<typeof FileExport> {
  static override summary = 'Copy a volume, or one of its checkpoints, to a sparse raw image file.';

  static override description = `Writes the volume's contents to a raw image as large as the volume. Only the data extents are read; holes and blocks of zeros are left as holes, so the image is a sparse file. The volume is opened read-only: nothing is written to the store, and a running "hyper serve" of the same volume is not disturbed.

The image may also be a block device (written in place, zeros included; it must be at least as large as the volume, and --overwrite is required) or "-" for stdout (the raw bytes, zeros included, and nothing else: the summary goes to stderr, and --json is refused).

By default the current checkpoint is exported; --at chooses an earlier one by number, snapshot name or time. The image is written under a temporary name and renamed when complete, so an interrupted or failed export (Ctrl-C included) leaves no partial image behind.`;

  static override examples = [
    {
      description: 'Export the latest checkpoint.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ disk.img',
    },
    {
      description: 'Export the volume as it was two hours ago, replacing an older export.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ vm1.img --at 2h --overwrite',
    },
    {
      description: 'Export the checkpoint pinned by a named snapshot.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/demo/ before-upgrade.img --at before-upgrade',
    },
    {
      description: 'Stream the volume to stdout, compressed on the fly.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ - | zstd > disk.img.zst',
    },
    {
      description: 'Write the volume onto a block device.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ /dev/vdb --overwrite',
    },
    {
      description: 'Export checkpoint 42 and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ disk-42.img --at 42 --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
    image: Args.string({
      description: 'Raw image to write: a file, a block device, or - for stdout.',
      required: true,
    }),
  };

  static override flags = {
    at: checkpointAt('Export this checkpoint instead of the current one.'),
    overwrite: Flags.boolean({
      summary: 'Replace the image file if it exists (required to write onto a block device).',
    }),
    progress,
  };

  public async run(): Promise<FileExportResult> {
    const { url, image } = this.args;
    const started = performance.now();
    const { at } = this.flags;
    const toStdout = image === '-';
    if (toStdout && this.jsonEnabled()) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        '--json cannot be used with "export -": stdout carries the image',
        { suggestion: 'Leave out --json (the summary goes to stderr), or export to a file.' },
      );
    }
    const store = await this.openStore(url);
    const spinner = this.spinner(`Exporting ${url}`); // stopped on failure by the base command
    const progress = this.progress(spinner);
    const label = `Exporting to ${toStdout ? 'stdout' : image}`;
    const onProgress = (n: number, total: number): void =>
      progress.update(label, { done: n, total, unit: 'bytes' });
    const signal = this.interruptible();
    const result = toStdout
      ? await withVolume(store, { readOnly: true, ...(at ? { at } : {}) }, async (volume) => {
          const stats = await exportStream(volume, process.stdout, {
            blockSize: volume.info.dataBlockSize,
            signal,
            onProgress,
          });
          if (stats.interrupted) {
            throw new HyperError(
              'unavailable',
              'ABORTED',
              `Export interrupted after ${bytesWithExact(stats.bytesDone)} of ${bytesWithExact(volume.info.size)}; stdout got a partial image.`,
            );
          }
          return { info: volume.info, stats };
        })
      : await exportToImageFile(store, image, {
          overwrite: this.flags.overwrite,
          signal,
          ...(at ? { at } : {}),
          onProgress,
        });
    progress.finish();
    spinner.stop();

    const out: FileExportResult = {
      url,
      image,
      size: result.info.size,
      at: at === undefined ? null : checkpointRefJson(at),
      checkpoint: result.info.checkpoint,
      checkpointTime: iso(result.info.checkpointTime),
      dataBytes: result.stats.dataBytes,
      zeroBytes: result.stats.zeroBytes,
      elapsedSeconds: secondsSince(started),
    };
    (toStdout ? (m: string) => this.note(m) : (m: string) => this.log(m))(
      `Exported ${url} checkpoint ${out.checkpoint} (${out.checkpointTime}) to ${toStdout ? 'stdout' : image}: ` +
        `${bytesWithExact(out.size)}, ${formatBytes(out.dataBytes)} of data, ${formatBytes(out.zeroBytes)} ${toStdout ? 'of zeros' : 'left sparse'}, ` +
        `${out.elapsedSeconds.toFixed(1)} s.`,
    );
    return out;
  }
}
