import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../base-command.js';
import { controlSocket } from '../flags.js';
import { ControlClient } from '../daemon/control.js';
import type { UnmapResult } from '../cli/vocabulary.js';

export default class Unmap extends BaseCommand<typeof Unmap> {
  static override summary = 'Remove an export from the running daemon.';

  static override description = `Flushes the export's volume while it is still served (if that fails the export stays mapped), stops offering it, lets each connected client finish the requests it has in flight and then closes the connection, flushes again, closes the volume and releases its lease. --force skips the first flush and drops connected clients at once. If the last flush fails, the export is listed as failed and its volume stays open in the daemon with the writes it could not store: unmap it again once the store answers, or with --force to close it and lose them. A mapping that failed (listed by "hyper ls" as failed) is forgotten.`;

  static override examples = [
    { description: 'Unmap an export.', command: '<%= config.bin %> <%= command.id %> vm1' },
    {
      description: 'Unmap at once, dropping clients.',
      command: '<%= config.bin %> <%= command.id %> vm1 --force --json',
    },
  ];

  static override args = {
    name: Args.string({ description: 'Export name (see "hyper ls").', required: true }),
  };

  static override flags = {
    force: Flags.boolean({
      summary: 'Drop connected clients at once instead of letting them finish.',
    }),
    'control-socket': controlSocket,
  };

  public async run(): Promise<UnmapResult> {
    const client = new ControlClient(this.flags['control-socket']);
    const q = this.flags.force ? '?force=true' : '';
    const r = await client.delete<UnmapResult>(
      `/v1/exports/${encodeURIComponent(this.args.name)}${q}`,
    );
    this.log(
      r.wasMapped
        ? `Unmapped ${r.name} (${r.url}); ${r.disconnectedClientCount} client(s) disconnected.`
        : `Forgot the failed mapping ${r.name} (${r.url}).`,
    );
    return r;
  }
}
