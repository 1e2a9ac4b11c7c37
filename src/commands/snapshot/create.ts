import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import {
  CHECKPOINT_REF_FORMS,
  checkpointRefJson,
  describeCheckpointRef,
} from '../../cli/checkpoint-ref.js';
import { iso, requestStats } from '../../cli/results.js';
import type { SnapshotCreateResult } from '../../cli/vocabulary.js';
import { checkpointRef, controlSocket, snapshotNameArg, volumeUrl } from '../../flags.js';
import { flushInServer } from '../../daemon/online.js';
import { createSnapshot } from '../../format/volume/history.js';
import { FLUSH_INTERVAL_MS } from '../../format/volume/types.js';

export type { SnapshotCreateResult };

export default class SnapshotCreate extends BaseCommand<typeof SnapshotCreate> {
  static override summary = 'Pin a checkpoint under a name.';

  static override description = `Every checkpoint of a volume can be restored or read as long as compaction keeps it; a named snapshot pins one so that compaction always keeps it, whatever the retention policy. By default the current checkpoint is pinned; --at pins an earlier one.

Creating a snapshot copies no data and takes a fixed, small number of requests whatever the size of the volume. It does not take the lease, so it is safe while the volume is served. A volume that "hyper daemon" on this host has mapped read-write, or that "hyper serve --control-socket PATH" serves, is flushed by that server first (asked through its control socket, --control-socket), so the snapshot holds every write acknowledged before the command; beside any other writer it pins the last committed checkpoint (what that writer acknowledged since is not in it). Names are 1-64 letters, digits, ".", "_" or "-"; a name that would read as a checkpoint number or a time (\`42\`, \`2h\`) is refused, and so is an existing name (exit code 4). The name is the second argument, as in "snapshot delete"; the older form --name NAME still works but is deprecated.`;

  static override examples = [
    {
      description: 'Pin the current checkpoint.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ before-upgrade',
    },
    {
      description: 'Pin the volume as it was two hours ago.',
      command: '<%= config.bin %> <%= command.id %> s3://my-bucket/vols/vm1/ last-good --at 2h',
    },
    {
      description: 'Pin checkpoint 42 and print the result as JSON.',
      command: '<%= config.bin %> <%= command.id %> file://./vols/demo/ cp42 --at 42 --json',
    },
  ];

  static override args = {
    url: volumeUrl({ required: true }),
    name: Args.string({ description: 'Name of the snapshot.' }),
  };

  static override flags = {
    name: Flags.string({
      char: 'n',
      summary: 'Name of the snapshot (deprecated: give it as the second argument).',
      helpValue: '<name>',
      deprecated: { message: 'give the name as the second argument: snapshot create URL NAME' },
    }),
    at: checkpointRef({
      summary: 'Pin this checkpoint instead of the current one.',
      description: `Accepts ${CHECKPOINT_REF_FORMS}.`,
    }),
    'control-socket': controlSocket,
  };

  public async run(): Promise<SnapshotCreateResult> {
    const { url } = this.args;
    const at = this.flags.at;
    const name = snapshotNameArg(this.args.name, this.flags.name, 'create', url, {
      creating: true,
    });
    const store = await this.openStore(url);
    // A server here that holds the volume (daemon, serve --control-socket) commits what it
    // acknowledged first.
    const flushed =
      at === undefined
        ? await flushInServer(store, url, {
            controlSocket: this.flags['control-socket'],
            signal: this.interruptible(),
            unusable: (e) =>
              this.note(
                `Note: ${e.code === 'PERMISSION_DENIED' ? `the control socket ${this.flags['control-socket']} cannot be used by this user` : e.message}, so no server was asked to commit its writes first.`,
              ),
          })
        : undefined;
    // (Who is writing is only said to people: no lease GET for --json or --quiet.)
    const snap = await createSnapshot(store, name, at, {
      lookForWriter: flushed === undefined && !this.jsonEnabled() && !this.quiet,
    });
    const result: SnapshotCreateResult = {
      url,
      name: snap.name,
      checkpoint: snap.checkpoint,
      createdAt: iso(snap.createdAt),
      at: at ? checkpointRefJson(at) : null,
      flushedBy:
        flushed === undefined
          ? null
          : {
              controlSocket: flushed.controlSocket,
              export: flushed.name,
              checkpoint: flushed.checkpoint,
            },
      requests: requestStats(store),
    };
    this.log(
      `Created snapshot "${result.name}" of ${url} at checkpoint ${result.checkpoint}` +
        `${at ? ` (${describeCheckpointRef(at)})` : ''}.`,
    );
    if (flushed)
      this.note(
        `The server on ${flushed.controlSocket} serves it (export ${flushed.name}) and committed what it had acknowledged first (checkpoint ${flushed.checkpoint}): the snapshot holds every write made before this command.`,
      );
    if (snap.writer) {
      const ago = `${(Math.max(0, snap.createdAt.getTime() - snap.writer.checkpointAt.getTime()) / 1000).toFixed(1)} s`;
      this.note(
        `Note: ${snap.writer.holder} is writing to this volume. The snapshot holds checkpoint ${result.checkpoint}, committed ${ago} before it: what that writer acknowledged since is not in it (it commits every ${FLUSH_INTERVAL_MS / 1000} s, and at each client flush unless it logs to a WAL). For a consistent snapshot of a running guest, sync or freeze its file system first (fsfreeze -f), wait for a newer checkpoint ("hyper snapshot list"), then create the snapshot.`,
      );
    }
    return result;
  }
}
