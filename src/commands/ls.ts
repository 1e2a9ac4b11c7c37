import { BaseCommand } from '../base-command.js';
import { formatBytes, formatDuration } from '../cli/units.js';
import { controlSocket } from '../flags.js';
import { ControlClient } from '../daemon/control.js';
import type { DaemonStatus, ExportStatus, LsResult } from '../cli/vocabulary.js';

export type { LsResult };

export default class Ls extends BaseCommand<typeof Ls> {
  static override summary = "List the running daemon's exports.";

  static override description = `One row per export: name, state, URI, connected clients, the lease (holder and epoch) of a writable export, bytes written but not yet committed (dirty), the age of the last checkpoint, and read/write rates over the last 5-10 s. A mapping that failed at start or reload is listed with its error. An export that cannot make writes durable now (lease lost or lapsed, flushes failing: what GET /healthz reports) is marked unhealthy, and the reason is printed below the table.`;

  static override examples = [
    { description: 'List the exports.', command: '<%= config.bin %> <%= command.id %>' },
    {
      description: 'As JSON, from a daemon on another socket.',
      command:
        '<%= config.bin %> <%= command.id %> --json --control-socket /run/hyper/control.sock',
    },
  ];

  static override flags = { 'control-socket': controlSocket };

  public async run(): Promise<LsResult> {
    const client = new ControlClient(this.flags['control-socket']);
    const daemon = await client.get<DaemonStatus>('/v1/daemon');
    const { exports } = await client.get<{ exports: ExportStatus[] }>('/v1/exports');
    if (exports.length === 0) {
      this.log('No exports. Add one with "hyper map URL".');
    } else {
      const rate = (n: number | null) => (n === null ? '' : `${formatBytes(n)}/s`);
      this.log(
        this.table(
          ['name', 'state', 'uri', 'clients', 'lease', 'dirty', 'checkpoint age', 'read', 'write'],
          exports.map((e) => [
            e.name,
            e.state === 'failed'
              ? `failed: ${e.error?.code ?? ''}`
              : `${e.state}${e.readOnly ? ' (ro)' : ''}${e.health === null ? '' : ' (unhealthy)'}`,
            e.uri ?? e.url,
            String(e.clientCount),
            e.lease === null ? '-' : `${e.lease.holder} epoch ${e.lease.epoch}`,
            e.dirtyBytes === null ? '' : formatBytes(e.dirtyBytes),
            e.checkpointAgeSeconds === null ? '' : formatDuration(e.checkpointAgeSeconds * 1000),
            rate(e.readBytesPerSecond),
            rate(e.writeBytesPerSecond),
          ]),
        ),
      );
      for (const e of exports) if (e.health !== null) this.log(`${e.name}: ${e.health}`);
    }
    return { daemon, exports };
  }
}
