import { Args } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { checkpointRefJson } from '../../cli/checkpoint-ref.js';
import { compareSides, imageSide, volumeSide, type CompareSide } from '../../cli/compare.js';
import { bytesWithExact, secondsSince } from '../../cli/results.js';
import { normalizeVolumeUrl } from '../../cli/url.js';
import type { FileCompareResult } from '../../cli/vocabulary.js';
import { HyperError } from '../../errors.js';
import { checkpointAt, otherStoreFlags, progress, volumeUrl } from '../../flags.js';
import type { OpenStoreOptions } from '../../format/store/index.js';
import type { CheckpointRef } from '../../format/volume/types.js';
import { Volume } from '../../format/volume/volume.js';

export type { FileCompareResult };

/** Exit status of `file compare` when the contents differ (README "Errors and exit codes"). */
export const EXIT_COMPARE_DIFFERENT = 9;

/** Whether an argument is a URL (a volume) rather than a path (an image). */
const isUrl = (s: string): boolean => /^[a-z][a-z0-9+.-]*:\/\//i.test(s);

export default class FileCompare extends BaseCommand<typeof FileCompare> {
  static override summary =
    'Compare a volume byte for byte with another volume or a raw image (exit 9 when they differ).';

  static override description = `Reads a checkpoint of the first volume (the current one, or --at) and the second volume (--second-at) or raw image file or block device, and compares their contents: to verify a copy, an import, an export or a backup. Both volumes are opened read-only; a running writer is not disturbed. Ranges that both volumes hold as holes are not read. Of different sizes, the shorter one must read as zeros to the end of the longer one.

The second volume is reached like the first (--endpoint, --region, --profile, the environment and the config file) unless --second-endpoint, --second-region or --second-profile say otherwise.

Exits 0 when the contents are identical and ${EXIT_COMPARE_DIFFERENT} when they differ, naming the first differing offset (what cmp and qemu-img compare report); errors keep their usual exit codes.`;

  static override examples = [
    {
      description: 'Verify a copy made with "file copy".',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ s3://my-bucket/vols/demo/',
    },
    {
      description: 'Verify an export against the checkpoint it was made from.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ disk-42.img --at 42',
    },
    {
      description: 'Compare a volume with what a snapshot of another held, as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ s3://my-bucket/vols/vm1-copy/ --second-at monday --json',
    },
  ];

  static override args = {
    first: volumeUrl({ required: true, description: 'Volume to compare (read-only).' }),
    second: Args.string({
      description:
        'Volume URL to compare with (read-only), or the path of a raw image file or block device.',
      required: true,
    }),
  };

  static override flags = {
    at: checkpointAt('Compare this checkpoint of the first volume instead of its current one.'),
    'second-at': checkpointAt(
      'Compare this checkpoint of the second volume instead of its current one.',
    ),
    ...otherStoreFlags('second', 'the second volume'),
    progress,
  };

  public async run(): Promise<FileCompareResult> {
    const { first } = this.args;
    const started = performance.now();
    const secondIsVolume = isUrl(this.args.second);
    const second = secondIsVolume
      ? normalizeVolumeUrl(this.args.second, 'second volume URL')
      : this.args.second;
    if (!secondIsVolume && this.flags['second-at'] !== undefined) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `--second-at names a checkpoint, and ${JSON.stringify(second)} is an image, not a volume URL`,
        { suggestion: 'Leave out --second-at, or give a volume URL (file://… or s3://…).' },
      );
    }
    const a = volumeSide(await this.openVolume(first, this.flags.at));
    let b: CompareSide | undefined;
    try {
      b = secondIsVolume
        ? volumeSide(
            await this.openVolume(
              second,
              this.flags['second-at'],
              this.otherStoreOptions('second'),
            ),
          )
        : await imageSide(second);
      const spinner = this.spinner(`Comparing ${first} with ${second}`);
      const progress = this.progress(spinner);
      const stats = await compareSides(a, b, {
        signal: this.interruptible(),
        onProgress: (done, total) => progress.update('Comparing', { done, total, unit: 'bytes' }),
      });
      progress.finish();
      spinner.stop();
      if (stats.interrupted) {
        throw new HyperError(
          'unavailable',
          'ABORTED',
          `Comparison interrupted: no difference in what was compared (${bytesWithExact(stats.comparedBytes)})`,
        );
      }
      const out: FileCompareResult = {
        first,
        second,
        firstAt: this.flags.at === undefined ? null : checkpointRefJson(this.flags.at),
        secondAt:
          this.flags['second-at'] === undefined ? null : checkpointRefJson(this.flags['second-at']),
        firstSize: a.size,
        secondSize: b.size,
        identical: stats.identical,
        firstDifference: stats.firstDifference ?? null,
        comparedBytes: stats.comparedBytes,
        elapsedSeconds: secondsSince(started),
      };
      const sizes =
        a.size === b.size
          ? ''
          : ` (sizes differ: ${bytesWithExact(a.size)} and ${bytesWithExact(b.size)}; the shorter one reads as zeros past its end)`;
      if (stats.identical) this.log(`Identical: ${first} and ${second}${sizes}.`);
      else {
        this.log(
          `Contents differ at offset ${out.firstDifference} (sector ${Math.floor((out.firstDifference ?? 0) / 512)}): ${first} and ${second}${sizes}.`,
        );
        process.exitCode = EXIT_COMPARE_DIFFERENT;
      }
      return out;
    } finally {
      await a.close().catch(() => undefined);
      await b?.close().catch(() => undefined);
    }
  }

  private async openVolume(
    url: string,
    at: CheckpointRef | undefined,
    elsewhere?: OpenStoreOptions,
  ): Promise<Volume> {
    const store = await this.openStore(url, elsewhere ? { with: elsewhere } : {});
    return Volume.open(store, { readOnly: true, ...(at ? { at } : {}) });
  }
}
