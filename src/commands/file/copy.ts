import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { checkpointRefJson } from '../../cli/checkpoint-ref.js';
import { copyVolume, missingTarget, type CopyCreateOptions } from '../../cli/copy.js';
import { iso, secondsSince } from '../../cli/results.js';
import { isHyperError } from '../../errors.js';
import { formatBytes } from '../../cli/units.js';
import type { FileCopyResult } from '../../cli/vocabulary.js';
import { checkpointAt, otherStoreFlags, progress, volumeUrl } from '../../flags.js';
import { COMPRESSIONS, type Compression } from '../../format/codec/block.js';
import { CIPHERS, type Cipher } from '../../format/codec/seal.js';

export type { FileCopyResult };

export default class FileCopy extends BaseCommand<typeof FileCopy> {
  static override summary =
    'Copy a volume, or one of its checkpoints, into another volume on any store.';

  static override description = `Reads one checkpoint of the source (opened read-only: a running "hyper serve" of it is not disturbed) and writes it into the target at the same offsets, with no image file in between: between buckets, between S3 and a local directory, or to another prefix. Only the source's data extents are read; holes and blocks of zeros are not stored.

With --create the target is made first, as large as the source and with its block and segment sizes, compression, encryption (the same key) and deduplication; --compression, --encryption (with the key of --key-file) and --[no-]dedup choose otherwise. Without --create the target must exist and be at least as large; ranges the source does not map are zeroed in it, and past the source's size it keeps what it holds.

The copy is the source's content only: its other checkpoints, snapshots and clone links are not copied, unless --snapshots copies its named snapshots too: each one's checkpoint, oldest first, as the changes since the one before, then the checkpoint copied, with each snapshot named the same in the target. A clone's copy holds what it reads through its parent and stands alone.

The target is reached like the source (--endpoint, --region, --profile, the environment and the config file) unless --target-endpoint, --target-region or --target-profile say otherwise; then its settings come from those flags and the config file only.

The target commits as it goes: Ctrl-C, or a failure of either store, leaves it at a valid checkpoint holding part of the copy. Run the same command again without --create (and with --snapshots if it had it) to finish it.`;

  static override examples = [
    {
      description: 'Move a volume to another bucket with its named snapshots (like rbd deep cp).',
      command:
        '<%= config.bin %> <%= command.id %> s3://old-bucket/vols/db/ s3://new-bucket/vols/db/ --create --snapshots',
    },
    {
      description: 'Copy a local volume to S3.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/demo/ s3://my-bucket/vols/demo/ --create',
    },
    {
      description: 'Copy the checkpoint a snapshot names into a new zstd-compressed volume.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ s3://archive/vm1-2026-11/ --at before-upgrade --create --compression zstd',
    },
    {
      description: 'Copy from an on-site Ceph RGW to AWS S3.',
      command:
        '<%= config.bin %> <%= command.id %> s3://vols/vm1/ s3://my-aws-bucket/vols/vm1/ --create --endpoint http://rgw.internal:7480 --target-region eu-west-1 --target-profile aws-backup',
    },
    {
      description: 'Refresh an existing copy and print the result as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ file:///srv/copies/vm1/ --json',
    },
  ];

  static override args = {
    source: volumeUrl({ required: true, description: 'Volume to copy from (read-only).' }),
    target: volumeUrl({ required: true, description: 'Volume to copy into.' }),
  };

  static override flags = {
    at: checkpointAt('Copy this checkpoint of the source instead of its current one.'),
    create: Flags.boolean({
      summary: 'Create the target first (fails if a volume is there), laid out like the source.',
    }),
    compression: Flags.string({
      summary: "With --create: compression of the target's blocks (default: the source's).",
      options: [...COMPRESSIONS],
      dependsOn: ['create'],
    }),
    encryption: Flags.string({
      summary:
        "With --create: encrypt the target with the key of --key-file, or none (default: the source's cipher and key).",
      options: ['none', ...CIPHERS],
      dependsOn: ['create'],
    }),
    dedup: Flags.boolean({
      summary: "With --create: deduplicate the target's blocks (default: as the source does).",
      allowNo: true,
      dependsOn: ['create'],
    }),
    snapshots: Flags.boolean({
      summary:
        "Copy the source's named snapshots too, oldest first, each as the changes since the one before (with --create; without it, finish such a copy that was interrupted).",
    }),
    ...otherStoreFlags('target', 'the target'),
    force: Flags.boolean({
      summary:
        "Take the target's lease even if another writer holds it (that writer is fenced and can commit nothing more).",
    }),
    progress,
  };

  public async run(): Promise<FileCopyResult> {
    const { source, target } = this.args;
    const { at } = this.flags;
    const started = performance.now();
    const from = await this.openStore(source);
    const elsewhere = this.otherStoreOptions('target');
    const to = await this.openStore(target, {
      mkdir: this.flags.create,
      ...(elsewhere ? { with: elsewhere } : {}),
    }).catch((e: unknown) => {
      throw this.noTarget(e, target);
    });
    const spinner = this.spinner(`Copying ${source} to ${target}`);
    const progress = this.progress(spinner);
    const result = await copyVolume(from, to, {
      ...(at ? { at } : {}),
      ...(this.flags.create ? { create: this.createOptions() } : {}),
      ...(this.flags.snapshots ? { snapshots: true } : {}),
      force: this.flags.force,
      signal: this.interruptible(),
      onProgress: (done, total) => progress.update('Copying', { done, total, unit: 'bytes' }),
    });
    progress.finish();
    spinner.stop();
    const out: FileCopyResult = {
      source,
      target,
      size: result.source.size,
      at: at === undefined ? null : checkpointRefJson(at),
      sourceCheckpoint: result.source.checkpoint,
      created: result.created,
      checkpoint: result.checkpoint.checkpoint,
      checkpointTime: iso(result.checkpoint.time),
      snapshots: result.snapshots.map((s) => ({ name: s.name, checkpoint: s.checkpoint })),
      dataBytes: result.stats.dataBytes,
      zeroBytes: result.stats.zeroBytes,
      elapsedSeconds: secondsSince(started),
    };
    const named =
      out.snapshots.length === 0
        ? ''
        : ` with ${out.snapshots.length} snapshot${out.snapshots.length === 1 ? '' : 's'} (${out.snapshots.map((s) => s.name).join(', ')})`;
    this.log(
      `Copied ${source} checkpoint ${out.sourceCheckpoint} (${formatBytes(out.size)}) to ${target}${out.created ? ', a new volume' : ''}${named}: ` +
        `${formatBytes(out.dataBytes)} of data written, ${formatBytes(out.zeroBytes)} of zeros and holes (nothing stored), ` +
        `checkpoint ${out.checkpoint}, ${out.elapsedSeconds.toFixed(1)} s.`,
    );
    return out;
  }

  /** No directory at a file:// target (and no --create): point at --create. */
  private noTarget(e: unknown, target: string): unknown {
    return isHyperError(e, 'VOLUME_NOT_FOUND') ? missingTarget(e, target) : e;
  }

  private createOptions(): CopyCreateOptions {
    const { compression, encryption, dedup } = this.flags;
    return {
      ...(compression === undefined ? {} : { compression: compression as Compression }),
      ...(encryption === undefined
        ? {}
        : encryption === 'none'
          ? { encryption: 'none' }
          : {
              encryption: encryption as Cipher,
              ...(this.volumeKey ? { key: this.volumeKey } : {}),
            }),
      ...(dedup === undefined ? {} : { dedup }),
    };
  }
}
