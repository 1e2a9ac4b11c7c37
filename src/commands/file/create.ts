import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, toVolumeSummary, type VolumeSummary } from '../../cli/results.js';
import { compression, dedup, encryption, requireSize, size, volumeUrl } from '../../flags.js';
import { MAX_VOLUME_SIZE } from '../../format/volume/types.js';
import type { Compression } from '../../format/codec/block.js';
import { Volume } from '../../format/volume/volume.js';

export type FileCreateResult = VolumeSummary;

export default class FileCreate extends BaseCommand<typeof FileCreate> {
  static override summary =
    'Create an empty volume with the default 4 KiB data and metadata blocks.';

  static override description = `Creates a thin-provisioned volume at the URL: no space is used until data is written, so the size can be generous. Data and metadata blocks are 4 KiB and segments 32 MiB; use "file create-opt" to choose other block or segment sizes. Blocks are stored lz4-compressed when that saves space (--compression), and can be encrypted on this host (--encryption with --key-file). Fails with VOLUME_EXISTS if a volume is already there.`;

  static override examples = [
    {
      description: 'Create a 10 GiB volume in a local directory.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ --size 10G',
    },
    {
      description: 'Create a volume in an S3 bucket on an S3-compatible store.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ --size 100G --endpoint http://127.0.0.1:7480',
    },
    {
      description: 'An encrypted, zstd-compressed volume (the key: 32 random bytes in a file).',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm2/ --size 40G --compression zstd --encryption xchacha20-poly1305 --key-file /etc/hyper/vm2.key',
    },
    {
      description: 'Create a volume and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> file:///srv/vols/db/ --size 1TiB --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    compression,
    encryption,
    dedup,
    size: size({
      char: 's',
      summary:
        'Logical size of the volume, required (a multiple of 512 bytes; grow it later with "file set-len").',
      min: 0,
      max: MAX_VOLUME_SIZE,
      multipleOf: 512,
    }),
  };

  public async run(): Promise<FileCreateResult> {
    const bytes = requireSize(this.flags.size, 'file create', this.args.url);
    const store = await this.openStore(this.args.url, { mkdir: true });
    const info = await Volume.create(store, {
      size: bytes,
      compression: this.flags.compression as Compression,
      ...this.encryptionOptions(this.flags.encryption),
      ...(this.flags.dedup ? { dedup: true } : {}),
    });
    const result = toVolumeSummary({ ...info, url: info.url || this.args.url });
    const features = [
      ...(result.compression === 'none' ? [] : [`${result.compression} compression`]),
      ...(result.keyId === null ? [] : [`${result.encryption} with key ${result.keyId}`]),
      ...(result.dedup ? ['deduplicated'] : []),
    ];
    const codec = features.length > 0 ? ` (${features.join(', ')})` : '';
    this.log(`Created volume ${result.url} of ${bytesWithExact(result.size)}${codec}.`);
    return result;
  }
}
