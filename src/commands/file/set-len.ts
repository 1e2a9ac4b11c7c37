import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, iso } from '../../cli/results.js';
import type { FileSetLenResult } from '../../cli/vocabulary.js';
import { HyperError } from '../../errors.js';
import { sizeChange, volumeUrl } from '../../flags.js';
import { MAX_VOLUME_SIZE } from '../../format/volume/types.js';
import { Volume } from '../../format/volume/volume.js';
import type { SizeChange } from '../../flags.js';

export type { FileSetLenResult };

export default class FileSetLen extends BaseCommand<typeof FileSetLen> {
  static override aliases = ['file:resize'];

  static override summary = 'Grow or shrink a volume.';

  static override description = `Sets the logical size of a volume. Growing only changes metadata: the new range reads as zeros and uses no space. Shrinking drops the data past the new end and needs --allow-shrink; growing again later shows zeros there, not the old data. The change is committed as a new checkpoint, so earlier checkpoints keep their size and data.`;

  static override examples = [
    {
      description: 'Grow a volume to 20 GiB.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --size 20G',
    },
    {
      description: 'Shrink a volume to 1 GiB, dropping the data past the new end.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --size 1G --allow-shrink',
    },
    {
      description: 'Grow a volume by 1 GiB.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --size +1G',
    },
    {
      description: 'Grow a volume and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --size 200G --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    size: sizeChange({
      char: 's',
      summary:
        'New logical size, or +SIZE / -SIZE relative to the current one (a multiple of 512 bytes).',
      description:
        'A relative shrink (--size=-1G) needs --allow-shrink like an absolute one; write it with "=" so that the minus sign is not read as a flag.',
      min: 0,
      max: MAX_VOLUME_SIZE,
      multipleOf: 512,
      required: true,
    }),
    'allow-shrink': Flags.boolean({
      summary: 'Allow a size smaller than the current one (the data past the new end is dropped).',
    }),
    force: Flags.boolean({
      summary:
        'Take the lease even if another writer holds it (that writer is fenced and can commit nothing more).',
    }),
  };

  public async run(): Promise<FileSetLenResult> {
    const { url } = this.args;
    const change = this.flags.size;
    const allowShrink = this.flags['allow-shrink'];
    const store = await this.openStore(url);
    const volume = await Volume.open(store, { force: this.flags.force });
    let result: FileSetLenResult;
    try {
      const before = volume.info;
      const target = resolveSize(change, before.size);
      if (target < before.size && !allowShrink) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Refusing to shrink ${url} from ${bytesWithExact(before.size)} to ${bytesWithExact(target)} without --allow-shrink`,
          {
            suggestion:
              'Add --allow-shrink to drop the data past the new end (earlier checkpoints keep it).',
          },
        );
      }
      if (target === before.size) {
        result = {
          url,
          previousSize: before.size,
          size: target,
          checkpoint: before.checkpoint,
          checkpointTime: iso(before.checkpointTime),
        };
      } else {
        const cp = await volume.resize(target, { allowShrink });
        result = {
          url,
          previousSize: before.size,
          size: target,
          checkpoint: cp.checkpoint,
          checkpointTime: iso(cp.time),
        };
      }
    } finally {
      await volume.close();
    }
    this.log(
      result.previousSize === result.size
        ? `${url} is already ${bytesWithExact(result.size)}; nothing changed.`
        : `Resized ${url} from ${bytesWithExact(result.previousSize)} to ${bytesWithExact(result.size)} (checkpoint ${result.checkpoint}).`,
    );
    return result;
  }
}

/** The size `change` asks for, given the current size; out of range is a usage error. */
export function resolveSize(change: SizeChange, current: number): number {
  if (change.sign === undefined) return change.bytes;
  const target = change.sign === '+' ? current + change.bytes : current - change.bytes;
  const text = `${change.sign}${bytesWithExact(change.bytes)}`;
  if (target < 0) {
    throw new HyperError(
      'invalid',
      'OUT_OF_RANGE',
      `--size ${text} would make the volume smaller than 0 B (it is ${bytesWithExact(current)})`,
      { suggestion: `Give an absolute size, e.g. --size ${current}.` },
    );
  }
  if (target > MAX_VOLUME_SIZE) {
    throw new HyperError(
      'invalid',
      'OUT_OF_RANGE',
      `--size ${text} would make the volume larger than the maximum, ${bytesWithExact(MAX_VOLUME_SIZE)}`,
      { suggestion: 'Give a smaller size.' },
    );
  }
  return target;
}
