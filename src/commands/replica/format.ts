import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import type { ReplicaFormatResult } from '../../cli/vocabulary.js';
import { formatBytes } from '../../cli/units.js';
import { compression, size } from '../../flags.js';
import type { Compression } from '../../format/codec/block.js';
import { MAX_VOLUME_SIZE } from '../../format/volume/types.js';
import { DEFAULT_REGION_SIZE, formatPrimary } from '../../replica/admin.js';
import { primaryFile } from '../../replica/flags.js';

export default class ReplicaFormat extends BaseCommand<typeof ReplicaFormat> {
  static override summary =
    'Make a file or block device a replication primary with a replica on S3.';

  static override description = `Writes a small header (uuid, device size, region size, replica URL, state and the dirty-region bitmap) in the first 1 MiB of the primary, creates the replica volume at <replica prefix>/<uuid>/ and prints the uuid. The exported device is the --device-size bytes after the header. A file that does not exist is created (sparse) and needs no first copy; an existing file or device is copied to the replica region by region when "replica serve" first runs, unless --assume-zeroed says it reads as zeros. A primary that already has a header is refused (PRIMARY_EXISTS) unless --force, and so is one whose first MiB holds a file system, partition table or LUKS/LVM/RAID label (DEVICE_HAS_DATA; wipefs -a removes those); one smaller than 1 MiB + --device-size is refused (OUT_OF_RANGE). A block device is opened exclusively: one that is mounted or held by another program is refused (PRIMARY_IN_USE). Nothing is written when refused.`;

  static override examples = [
    {
      description: 'A 4 GiB primary on an NVMe partition, replicated to a bucket.',
      command:
        '<%= config.bin %> <%= command.id %> --file /dev/nvme1n1 --device-size 4G --replica s3://bkt/replicas/',
    },
    {
      description: 'A file primary with 4 MiB regions; the result as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> --file /srv/primary.img --device-size 10G --replica file:///srv/replicas/ --region-size 4M --json',
    },
  ];

  static override flags = {
    file: primaryFile,
    'device-size': size({
      summary: 'Size of the exported device.',
      required: true,
      min: 512,
      max: MAX_VOLUME_SIZE,
    }),
    replica: Flags.string({
      summary: 'Prefix URL under which the replica volume is created (named by the uuid).',
      helpValue: '<url>',
      required: true,
    }),
    'region-size': size({
      summary: 'Unit of resync and of the dirty bitmap (a power of two, at least 64K).',
      default: DEFAULT_REGION_SIZE,
    }),
    'data-block-size': size({
      summary: 'Data block size of the replica volume.',
      default: 4096,
      min: 512,
      max: 1024 * 1024,
    }),
    compression,
    force: Flags.boolean({
      summary:
        'Format a primary that already has a header (its data is kept and copied to a new replica).',
    }),
    'assume-zeroed': Flags.boolean({
      summary:
        'The existing file or device reads as zeros (a new disk, or one cleared with blkdiscard -z): skip the first copy.',
      description:
        'Like a file format creates, it then starts in logging mode with nothing to copy. Taken on your word: where the device is not zero and never written later, the replica differs ("hyper replica check" lists those regions; "hyper replica resync --full" copies everything). Refused with a primary that already has a header.',
    }),
  };

  public async run(): Promise<ReplicaFormatResult> {
    const f = this.flags;
    const r = await formatPrimary({
      file: f.file,
      deviceSize: f['device-size'],
      replicaPrefix: f.replica,
      regionSize: f['region-size'],
      dataBlockSize: f['data-block-size'],
      force: f.force,
      assumeZeroed: f['assume-zeroed'],
      ...(f.compression ? { create: { compression: f.compression as Compression } } : {}),
      openStore: (u, o) => this.openStore(u, o),
    });
    this.log(r.uuid);
    this.note(
      `Formatted ${r.file} (${formatBytes(r.deviceSize)} device, ${formatBytes(r.regionSize)} regions); replica ${r.replicaUrl}${r.mode === 'forward-full' ? '; the first "replica serve" copies every region' : ''}.`,
    );
    return r;
  }
}
