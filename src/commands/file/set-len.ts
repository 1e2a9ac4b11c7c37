import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, iso } from '../../cli/results.js';
import type { FileSetLenResult } from '../../cli/vocabulary.js';
import { HyperError, isHyperError } from '../../errors.js';
import { controlSocket, sizeChange, volumeUrl } from '../../flags.js';
import { resizeInServer } from '../../daemon/online.js';
import { MAX_VOLUME_SIZE } from '../../format/volume/types.js';
import { Volume } from '../../format/volume/volume.js';
import type { SizeChange } from '../../flags.js';

export type { FileSetLenResult };

export default class FileSetLen extends BaseCommand<typeof FileSetLen> {
  static override aliases = ['file:resize'];

  static override summary = 'Grow or shrink a volume.';

  static override description = `Sets the logical size of a volume. Growing only changes metadata: the new range reads as zeros and uses no space. Shrinking drops the data past the new end and needs --allow-shrink; growing again later shows zeros there, not the old data. The change is committed as a new checkpoint, so earlier checkpoints keep their size and data.

A volume that "hyper daemon" on this host has mapped read-write, or that "hyper serve --control-socket PATH" serves, is grown by that server, online (asked through its control socket, --control-socket): connections made from then on see the new size, those already open keep the old one until they reconnect. A served volume is never shrunk (DEVICE_BUSY, exit code 4).`;

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
      description:
        'Without it, a volume that a server on this host serves read-write (hyper daemon, or hyper serve --control-socket) is grown by that server, through --control-socket.',
    }),
    'control-socket': controlSocket,
  };

  public async run(): Promise<FileSetLenResult> {
    const { url } = this.args;
    const change = this.flags.size;
    const allowShrink = this.flags['allow-shrink'];
    const target = (current: number): number => {
      const size = resolveSize(change, current);
      if (size < current && !allowShrink) throw shrinkRefused(url, current, size);
      return size;
    };
    const store = await this.openStore(url);
    let volume: Volume;
    try {
      volume = await Volume.open(store, { force: this.flags.force });
    } catch (e) {
      if (!isHyperError(e, 'LEASE_HELD') || this.flags.force) throw e;
      // Served read-write by a server here with a control socket (daemon, serve
      // --control-socket): it grows the volume itself, as asked.
      const online = await resizeInServer(store, url, {
        controlSocket: this.flags['control-socket'],
        signal: this.interruptible(),
        size: target,
        unusable: (err) =>
          this.note(
            `Note: ${err.code === 'PERMISSION_DENIED' ? `the control socket ${this.flags['control-socket']} cannot be used by this user` : err.message}, so the server that holds it was not asked to resize it.`,
          ),
      });
      if (online === undefined)
        throw new HyperError(e.kind, e.code, e.message, {
          cause: e,
          suggestion:
            'A served volume is grown by its server: "hyper file set-len" asks a daemon on this host that serves it, or a "hyper serve --control-socket", on --control-socket. Or stop that writer, wait for its lease to expire, or take over with --force (it is fenced and can commit nothing more).',
        });
      return this.done(
        {
          url,
          previousSize: online.previousSize,
          size: online.size,
          checkpoint: online.checkpoint,
          checkpointTime: online.time,
          resizedBy: { controlSocket: online.controlSocket, export: online.name },
        },
        `The server on ${online.controlSocket} serves it (export ${online.name}) and grew it: connections made from now on see the new size; clients connected before keep the old one until they reconnect.`,
      );
    }
    let result: FileSetLenResult;
    try {
      const before = volume.info;
      const size = target(before.size);
      const cp =
        size === before.size
          ? { checkpoint: before.checkpoint, time: before.checkpointTime }
          : await volume.resize(size, { allowShrink });
      result = {
        url,
        previousSize: before.size,
        size,
        checkpoint: cp.checkpoint,
        checkpointTime: iso(cp.time),
        resizedBy: null,
      };
    } finally {
      await volume.close();
    }
    return this.done(result);
  }

  private done(result: FileSetLenResult, grownOnline?: string): FileSetLenResult {
    this.log(
      result.previousSize === result.size
        ? `${result.url} is already ${bytesWithExact(result.size)}; nothing changed.`
        : `Resized ${result.url} from ${bytesWithExact(result.previousSize)} to ${bytesWithExact(result.size)} (checkpoint ${result.checkpoint}).`,
    );
    if (grownOnline !== undefined && result.previousSize !== result.size) this.note(grownOnline);
    return result;
  }
}

function shrinkRefused(url: string, from: number, to: number): HyperError {
  return new HyperError(
    'invalid',
    'INVALID_ARGUMENT',
    `Refusing to shrink ${url} from ${bytesWithExact(from)} to ${bytesWithExact(to)} without --allow-shrink`,
    {
      suggestion:
        'Add --allow-shrink to drop the data past the new end (earlier checkpoints keep it).',
    },
  );
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
