import { open } from 'node:fs/promises';
import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, iso, secondsSince } from '../../cli/results.js';
import type { FileImportResult } from '../../cli/vocabulary.js';
import {
  imageSize as readImageSize,
  importImage,
  importStream,
  withVolume,
} from '../../cli/transfer.js';
import { formatBytes } from '../../cli/units.js';
import { HyperError, isHyperError } from '../../errors.js';
import { progress, size, volumeUrl } from '../../flags.js';
import { MAX_VOLUME_SIZE } from '../../format/volume/types.js';
import { Volume } from '../../format/volume/volume.js';

export type { FileImportResult };

export default class FileImport extends BaseCommand<typeof FileImport> {
  static override summary = 'Copy a raw disk image into a volume, skipping blocks of zeros.';

  static override description = `Reads the image in 4 MiB chunks with several in flight and writes it to the volume from offset 0. Blocks that are all zeros are not stored (into an existing volume they are zeroed, which stores nothing either). With --create the volume is made first, as large as the image unless --size says otherwise; without it the volume must exist and be at least as large as the image.

The image may be a regular file, a block device (its size is read from the kernel), or "-" for stdin (a pipe: give --size with --create, since the length is known only at the end; zeros past the end of the input are not written, so import into a fresh or empty volume).

Data is committed as it goes: every segment's worth of writes (32 MiB by default) commits a checkpoint, and the import ends with a flush, so a large image lands as several checkpoints, the last holding all of it. Ctrl-C stops it cleanly: the chunks already written are committed as a valid checkpoint (the volume never holds a half-written state); run the import again to finish. On a terminal the progress (bytes, rate, time left) is shown on stderr; --progress prints it as plain lines on a non-terminal.`;

  static override examples = [
    {
      description: 'Create a volume from a disk image.',
      command: '<%= config.bin %> <%= command.id %> disk.img file://./vols/demo/ --create',
    },
    {
      description: 'Create a 100 GiB volume and put a smaller image at its start.',
      command:
        '<%= config.bin %> <%= command.id %> disk.img s3://my-bucket/vols/vm1/ --create --size 100G',
    },
    {
      description: 'Import a block device (e.g. an LVM snapshot).',
      command: '<%= config.bin %> <%= command.id %> /dev/vg0/vm1-snap file://./vols/vm1/ --create',
    },
    {
      description: 'Import from a pipe, with progress lines for a CI log.',
      command:
        'zstdcat disk.img.zst | <%= config.bin %> <%= command.id %> - file://./vols/demo/ --create --size 10G --progress',
    },
    {
      description: 'Import into an existing volume and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> disk.img file://./vols/demo/ --json',
    },
  ];

  static override args = {
    image: Args.string({
      description: 'Raw image to read: a file, a block device, or - for stdin.',
      required: true,
    }),
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    create: Flags.boolean({ summary: 'Create the volume first (fails if it exists).' }),
    size: size({
      char: 's',
      summary: 'With --create: volume size (default: the image size rounded up to 512 bytes).',
      min: 0,
      max: MAX_VOLUME_SIZE,
      multipleOf: 512,
      dependsOn: ['create'],
    }),
    force: Flags.boolean({
      summary:
        'Take the lease even if another writer holds it (that writer is fenced and can commit nothing more).',
    }),
    progress,
  };

  public async run(): Promise<FileImportResult> {
    const { image, url } = this.args;
    const started = performance.now();
    const stdin = image === '-';
    if (stdin && this.flags.create && this.flags.size === undefined) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        'Importing from stdin with --create needs --size: the length of a pipe is known only at its end',
        { suggestion: `Add --size, e.g. --size 10G (at least the input's length).` },
      );
    }
    // stdin: the length is unknown until the end; the volume's size is the limit.
    let imageSize = stdin ? 0 : await readImageSize(image);
    const store = await this.openStore(url, { mkdir: this.flags.create });

    let created = false;
    if (this.flags.create) {
      const volumeSize = this.flags.size ?? Math.ceil(imageSize / 512) * 512;
      // (stdin with --create always has --size, checked above)
      if (volumeSize < imageSize) {
        throw new HyperError(
          'invalid',
          'OUT_OF_RANGE',
          `--size ${bytesWithExact(volumeSize)} is smaller than the image (${bytesWithExact(imageSize)})`,
          { suggestion: 'Leave out --size to make the volume as large as the image.' },
        );
      }
      await Volume.create(store, { size: volumeSize });
      created = true;
    }

    const signal = this.interruptible();
    const file = stdin ? undefined : await open(image, 'r');
    try {
      const result = await withVolume(store, { force: this.flags.force }, async (volume) => {
        const info = volume.info;
        if (info.size < imageSize) {
          throw new HyperError(
            'invalid',
            'OUT_OF_RANGE',
            `The image (${bytesWithExact(imageSize)}) is larger than the volume (${bytesWithExact(info.size)})`,
            {
              suggestion: `Grow the volume first: hyper file set-len ${url} --size ${Math.ceil(imageSize / 512) * 512}`,
            },
          );
        }
        const what = stdin ? 'stdin' : image;
        const spinner = this.spinner(`Importing ${what} into ${url}`);
        const progress = this.progress(spinner);
        const transfer = {
          blockSize: info.dataBlockSize,
          // Zeros need writing only over existing data (a new or empty volume reads as zeros).
          zeroFill: !created && info.mappedBlocks > 0,
          signal,
          onProgress: (done: number, total: number) =>
            progress.update(
              `Importing ${what}`,
              stdin ? { done, unit: 'bytes' } : { done, total, unit: 'bytes' },
            ),
        };
        const stats = file
          ? await importImage(file, imageSize, volume, transfer)
          : await importStream(process.stdin, info.size, volume, transfer);
        if (stdin) imageSize = stats.bytesDone;
        progress.finish();
        progress.status(stats.interrupted ? 'Committing what was written…' : 'Flushing…');
        const cp = await volume.flush();
        progress.finish();
        spinner.stop();
        return { stats, cp, volumeSize: info.size };
      });
      const { stats, cp } = result;
      if (stats.interrupted) {
        throw new HyperError(
          'unavailable',
          'ABORTED',
          `Import interrupted after ${bytesWithExact(stats.bytesDone)} of ${bytesWithExact(imageSize)}; ` +
            `what was written is committed as checkpoint ${cp.checkpoint}.`,
          { suggestion: 'Run the same import again (without --create) to finish it.' },
        );
      }
      const out: FileImportResult = {
        image,
        url,
        imageSize,
        created,
        volumeSize: result.volumeSize,
        dataBytes: stats.dataBytes,
        zeroBytes: stats.zeroBytes,
        checkpoint: cp.checkpoint,
        checkpointTime: iso(cp.time),
        elapsedSeconds: secondsSince(started),
      };
      this.log(
        `Imported ${stdin ? 'stdin' : image} (${formatBytes(imageSize)}) into ${url}${created ? ', a new volume' : ''}: ` +
          `${formatBytes(out.dataBytes)} of data written, ${formatBytes(out.zeroBytes)} of zeros skipped, ` +
          `checkpoint ${out.checkpoint}, ${out.elapsedSeconds.toFixed(1)} s.`,
      );
      return out;
    } catch (e) {
      // No volume there (for file://, not even the directory): point at --create.
      const noVolume =
        isHyperError(e, 'VOLUME_NOT_FOUND') ||
        (isHyperError(e, 'BUCKET_NOT_FOUND') && url.startsWith('file://'));
      if (!created && noVolume) {
        throw new HyperError('not-found', 'VOLUME_NOT_FOUND', `No volume at ${url}`, {
          suggestion: 'Add --create to create the volume from the image.',
          cause: e,
        });
      }
      throw e;
    } finally {
      await file?.close();
    }
  }
}
