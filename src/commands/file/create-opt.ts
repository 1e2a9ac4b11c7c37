import { BaseCommand } from '../../base-command.js';
import { bytesWithExact, toVolumeSummary, type VolumeSummary } from '../../cli/results.js';
import { formatBytes } from '../../cli/units.js';
import { HyperError } from '../../errors.js';
import { compression, dedup, encryption, requireSize, size, volumeUrl } from '../../flags.js';
import {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_SEGMENT_SIZE,
  MAX_DATA_BLOCK_SIZE,
  MAX_META_BLOCK_SIZE,
  MAX_SEGMENT_SIZE,
  MAX_VOLUME_SIZE,
  MIN_DATA_BLOCK_SIZE,
  MIN_META_BLOCK_SIZE,
  MIN_SEGMENT_SIZE,
} from '../../format/volume/types.js';
import type { Compression } from '../../format/codec/block.js';
import { Volume } from '../../format/volume/volume.js';

export type FileCreateOptResult = VolumeSummary;

export default class FileCreateOpt extends BaseCommand<typeof FileCreateOpt> {
  static override summary =
    'Create an empty volume with chosen data block, metadata block and segment sizes.';

  static override description = `Like "file create", with the layout chosen at creation time (it cannot change later):
  - data block size: the unit of mapping and of copy-on-write. Small blocks (4 KiB) suit random I/O of VM disks; large blocks (512 KiB - 4 MiB) make the index smaller and suit sequential scratch data.
  - metadata block size: the size of index nodes read by ranged GETs.
  - segment size: how many dirty bytes start a flush, so roughly the size of each object written.
Block sizes are powers of two: data ${formatBytes(MIN_DATA_BLOCK_SIZE)} to ${formatBytes(MAX_DATA_BLOCK_SIZE)}, metadata ${formatBytes(MIN_META_BLOCK_SIZE)} to ${formatBytes(MAX_META_BLOCK_SIZE)}; segments ${formatBytes(MIN_SEGMENT_SIZE)} to ${formatBytes(MAX_SEGMENT_SIZE)}.`;

  static override examples = [
    {
      description: 'A scratch volume with 512 KiB data blocks and 64 MiB segments.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/scratch/ --data-block-size 512K --segment-size 64M --size 1T',
    },
    {
      description: 'Same, printing the result as JSON.',
      command:
        '<%= config.bin %> <%= command.id %> file://./vols/scratch/ --data-block-size 524288 --size 1T --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    compression,
    encryption,
    dedup,
    'data-block-size': size({
      summary: 'Data block size (power of two).',
      min: MIN_DATA_BLOCK_SIZE,
      max: MAX_DATA_BLOCK_SIZE,
      powerOfTwo: true,
      required: true,
    }),
    'meta-block-size': size({
      summary: 'Metadata (index node) block size (power of two).',
      min: MIN_META_BLOCK_SIZE,
      max: MAX_META_BLOCK_SIZE,
      powerOfTwo: true,
      default: DEFAULT_BLOCK_SIZE,
      defaultHelp: async () => formatBytes(DEFAULT_BLOCK_SIZE).replace(' ', ''),
    }),
    size: size({
      char: 's',
      summary: 'Logical size of the volume, required (a multiple of 512 bytes).',
      min: 0,
      max: MAX_VOLUME_SIZE,
      multipleOf: 512,
    }),
    'segment-size': size({
      summary: 'Target segment (object) size.',
      min: MIN_SEGMENT_SIZE,
      max: MAX_SEGMENT_SIZE,
      default: DEFAULT_SEGMENT_SIZE,
      defaultHelp: async () => formatBytes(DEFAULT_SEGMENT_SIZE).replace(' ', ''),
    }),
  };

  public async run(): Promise<FileCreateOptResult> {
    const bytes = requireSize(this.flags.size, 'file create-opt', this.args.url);
    const dataBlockSize = this.flags['data-block-size'];
    const metaBlockSize = this.flags['meta-block-size'];
    const segmentSize = this.flags['segment-size'];
    if (segmentSize < dataBlockSize) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `--segment-size (${formatBytes(segmentSize)}) is smaller than --data-block-size (${formatBytes(dataBlockSize)})`,
        { suggestion: 'Use a segment size of at least one data block, typically 8 or more.' },
      );
    }
    const store = await this.openStore(this.args.url, { mkdir: true });
    const info = await Volume.create(store, {
      size: bytes,
      dataBlockSize,
      metaBlockSize,
      segmentSize,
      compression: this.flags.compression as Compression,
      ...this.encryptionOptions(this.flags.encryption),
      ...(this.flags.dedup ? { dedup: true } : {}),
    });
    const result = toVolumeSummary({ ...info, url: info.url || this.args.url });
    this.log(
      `Created volume ${result.url} of ${bytesWithExact(result.size)} ` +
        `(data blocks ${formatBytes(result.dataBlockSize)}, metadata blocks ${formatBytes(result.metaBlockSize)}, ` +
        `segments ${formatBytes(result.segmentSize)}, compression ${result.compression}, ` +
        `encryption ${result.keyId === null ? 'none' : `${result.encryption} with key ${result.keyId}`}` +
        `${result.dedup ? ', deduplicated' : ''}).`,
    );
    return result;
  }
}
