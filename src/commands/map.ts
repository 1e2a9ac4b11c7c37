import { Flags } from '@oclif/core';
import { BaseCommand } from '../base-command.js';
import {
  CHECKPOINT_REF_FORMS,
  checkpointRefJson,
  parseCheckpointRef,
} from '../cli/checkpoint-ref.js';
import { normalizeVolumeUrl } from '../cli/url.js';
import { controlSocket, volumeUrl } from '../flags.js';
import { ControlClient } from '../daemon/control.js';
import type { MapResult } from '../cli/vocabulary.js';
import type { MapRequest } from '../daemon/schema.js';

export default class MapCommand extends BaseCommand<typeof MapCommand> {
  static override summary = 'Add an export to the running daemon.';

  static override description = `Asks the daemon ("hyper daemon") to export the volume at the URL over NBD, named by the last part of its path or --name. A writable export takes the volume's lease, as "hyper serve" does: a volume another process holds is refused with LEASE_HELD (exit 4) unless --force (take it over, fencing the holder) or --wait. The daemon opens the volume with its own credentials; --endpoint and --region given here are passed on. The mapping is remembered across daemon restarts.`;

  static override examples = [
    {
      description: 'Map a volume on RGW; clients then use nbd://127.0.0.1:10809/vm1.',
      command:
        '<%= config.bin %> <%= command.id %> s3://bucket/vols/vm1/ --endpoint http://127.0.0.1:7480',
    },
    {
      description: "Map yesterday's state of a volume read-only under another name.",
      command:
        '<%= config.bin %> <%= command.id %> file:///srv/vols/db/ --name db-yesterday --at 1d',
    },
  ];

  static override args = { url: volumeUrl({ required: true }) };

  static override flags = {
    name: Flags.string({
      summary: 'Export name (default: the last part of the URL path).',
      helpValue: '<name>',
    }),
    'read-only': Flags.boolean({ summary: 'Export read-only (no lease is taken).' }),
    at: Flags.string({
      summary: `Export a past checkpoint read-only: ${CHECKPOINT_REF_FORMS}.`,
      helpValue: '<checkpoint>',
    }),
    'wal-url': Flags.string({
      summary: 'Log every write to a write-ahead log at this URL before acknowledging it.',
      helpValue: '<url>',
      exclusive: ['read-only', 'at'],
    }),
    'wal-ack': Flags.string({
      summary:
        'With a WAL: "write" (the default) logs each write before its reply; "flush" logs writes at the next FLUSH or FUA write.',
      options: ['write', 'flush'],
      exclusive: ['read-only', 'at'],
    }),
    force: Flags.boolean({
      summary: 'Take the lease even if another writer holds it (that writer is fenced).',
      exclusive: ['read-only', 'at'],
    }),
    wait: Flags.boolean({
      summary: 'If another writer holds the lease, wait until it is released or expires.',
      exclusive: ['force', 'read-only', 'at'],
    }),
    'control-socket': controlSocket,
  };

  public async run(): Promise<MapResult> {
    const { url } = this.args;
    const f = this.flags;
    const at = f.at === undefined ? undefined : parseCheckpointRef(f.at, { name: '--at' });
    const request: MapRequest = {
      url,
      ...(f.name === undefined ? {} : { name: f.name }),
      ...(f['read-only'] ? { readOnly: true } : {}),
      ...(at === undefined ? {} : { at: checkpointRefJson(at) }),
      ...(f['wal-url'] === undefined
        ? {}
        : { walUrl: normalizeVolumeUrl(f['wal-url'], 'WAL URL') }),
      ...(f['wal-ack'] === undefined ? {} : { walAck: f['wal-ack'] as 'write' | 'flush' }),
      ...(f.endpoint === undefined ? {} : { endpoint: f.endpoint }),
      ...(f.region === undefined ? {} : { region: f.region }),
      ...(f.force ? { force: true } : {}),
      ...(f.wait ? { wait: true } : {}),
    };
    const client = new ControlClient(f['control-socket']);
    const result = await client.post<MapResult>('/v1/exports', request, this.interruptible());
    this.log(result.uri ?? result.name);
    return result;
  }
}
