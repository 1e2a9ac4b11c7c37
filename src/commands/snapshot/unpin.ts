import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import type { SnapshotUnpinResult } from '../../cli/vocabulary.js';
import { volumeUrl } from '../../flags.js';
import { normalizeVolumeUrl } from '../../cli/url.js';
import { unpinClone } from '../../format/volume/clone.js';

export type { SnapshotUnpinResult };

export default class SnapshotUnpin extends BaseCommand<typeof SnapshotUnpin> {
  static override summary = 'Release the pin a clone that no longer exists left on its parent.';

  static override description = `A clone pins the checkpoint it starts from, so that the parent's compaction keeps what the clone reads; flattening or deleting the clone releases the pin. A clone deleted by an older hyper, or with --force while its parent could not be reached, leaves its pin behind: the parent then keeps that checkpoint for good and "hyper file delete" refuses it (HAS_CLONES). This releases such pins. Name the clone by the URL its pin records ("hyper snapshot list" shows it as "pinned by clone URL") or by its UUID. A pin stays while a volume with that UUID is at that URL (flatten or delete that clone instead: exit code 4), and while the URL cannot be read, unless --force. A clone (with that UUID) that is flattened no longer needs its pin, which is released. A clone being created at that URL at the same moment keeps its pin (it writes its first segment before its pin, and a URL that holds objects but no volume head cannot be told gone).`;

  static override examples = [
    {
      description: 'Release the pin of a clone that was deleted.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/base/ s3://my-bucket/vols/old-test/',
    },
    {
      description: 'Release it although the clone’s bucket can no longer be read.',
      command:
        '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/base/ s3://gone-bucket/vm7/ --force',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true, description: 'The parent volume that holds the pin.' }),
    clone: Args.string({
      required: true,
      description: 'The clone: the URL its pin records, or its UUID.',
    }),
  };

  static override flags = {
    force: Flags.boolean({
      summary:
        'Release the pin also when the clone’s URL cannot be read (a clone still there breaks).',
    }),
  };

  public async run(): Promise<SnapshotUnpinResult> {
    const { url } = this.args;
    const clone = /^[0-9a-f]{32}$/.test(this.args.clone)
      ? this.args.clone
      : await normalizeVolumeUrl(this.args.clone, 'clone URL');
    const store = await this.openStore(url);
    const r = await unpinClone(store, clone, {
      force: this.flags.force,
      openStore: (u) => this.openStore(u),
    });
    const lines = r.released.map(
      (p) =>
        `Released ${p.key} of the clone ${p.cloneUrl}: checkpoint ${p.checkpoint} of ${url} is no longer pinned by it.`,
    );
    for (const p of r.kept) lines.push(`Kept ${p.key}: ${p.reason}.`);
    this.log(lines.join('\n'));
    return {
      url,
      released: r.released.map((p) => ({
        key: p.key,
        checkpoint: p.checkpoint,
        cloneUrl: p.cloneUrl,
      })),
      kept: r.kept.map((p) => ({
        key: p.key,
        checkpoint: p.checkpoint,
        cloneUrl: p.cloneUrl,
        cloneExists: p.cloneExists,
        reason: p.reason,
      })),
    };
  }
}
