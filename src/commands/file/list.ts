import { BaseCommand } from '../../base-command.js';
import { isoOrNull } from '../../cli/results.js';
import type { FileListResult, VolumeListItem } from '../../cli/vocabulary.js';
import { formatBytes } from '../../cli/units.js';
import { prefixUrl } from '../../flags.js';
import { listVolumes } from '../../format/volume/admin.js';

export type { FileListResult, VolumeListItem };

export default class FileList extends BaseCommand<typeof FileList> {
  static override aliases = ['file:ls'];

  static override summary = 'List the volumes under a prefix.';

  static override description = `Finds every volume at or below the prefix (a volume is a prefix holding a head object) and shows its size and latest checkpoint. Nothing is opened or written.`;

  static override examples = [
    {
      description: 'List the volumes in a local directory.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/',
    },
    {
      description: 'List the volumes of a bucket as JSON.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/ --json',
    },
  ];

  static override args = {
    url: prefixUrl({ required: true }),
  };

  public async run(): Promise<FileListResult> {
    const { url } = this.args;
    const store = await this.openStore(url, { prefix: true });
    const listed = await listVolumes(store);
    const result: FileListResult = {
      url,
      volumes: listed.map((v): VolumeListItem =>
        v.error === undefined
          ? {
              name: v.name,
              url: v.url,
              size: v.size,
              checkpoint: v.checkpoint,
              checkpointTime: isoOrNull(v.checkpointTime),
              error: null,
            }
          : // An unreadable head has no size or checkpoint to show.
            {
              name: v.name,
              url: v.url,
              size: null,
              checkpoint: null,
              checkpointTime: null,
              error: v.error,
            },
      ),
    };
    if (result.volumes.length === 0) {
      this.log(`No volumes under ${url}.`);
    } else {
      this.log(
        this.table(
          ['NAME', 'SIZE', 'CHECKPOINT', 'CHECKPOINT TIME', 'STATUS'],
          result.volumes.map((v) =>
            v.error === null
              ? [
                  v.name,
                  formatBytes(v.size ?? 0),
                  String(v.checkpoint),
                  v.checkpointTime ?? '-',
                  'ok',
                ]
              : // A head that cannot be read has no size or time: say why instead of 0 B, 1970.
                [v.name, '-', '-', '-', v.error],
          ),
        ),
      );
    }
    return result;
  }
}
