import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import type { ReplicaServeListening, ReplicaServeResult } from '../../cli/vocabulary.js';
import { duration, metricsFlags, metricsListenOf, size } from '../../flags.js';
import { DEFAULT_POOL_BYTES, DEFAULT_RECOVER_CONCURRENCY } from '../../replica/replicator.js';
import { primaryFile, primaryUuid, replicaControlSocket } from '../../replica/flags.js';
import { ReplicaServer } from '../../replica/serve.js';
import {
  LOG_FORMATS,
  LOG_LEVELS,
  lineLogger,
  type LogFormat,
  type LogLevel,
} from '../../serve/logger.js';

export default class ReplicaServe extends BaseCommand<typeof ReplicaServe> {
  static override summary =
    'Export a replication primary over NBD and ship every write to its replica.';

  static override description = `Reads and writes go to the primary at local-disk speed; every write is also queued, in order, in a memory pool of --pool-size and shipped asynchronously to the replica volume, which commits a checkpoint at every client FLUSH it reaches (and at least every second while writes wait). A FLUSH is acknowledged once the primary is durable (fdatasync), not when the replica has it. When the pool overflows or the replica is unreachable, the changed regions are tracked in the dirty bitmap on the primary and copied once the replica is back; a restart after a crash copies the regions the bitmap names, nothing more. The replica volume's lease is held while serving: another writer of it is refused. Runs until SIGINT/SIGTERM, then ships what is queued (for at most --drain) and stops.`;

  static override examples = [
    {
      description: 'Serve a primary on the default NBD port with a control socket.',
      command:
        '<%= config.bin %> <%= command.id %> --file /dev/nvme1n1 --uuid 0b9f…  --control-socket /run/hyper/replica.sock',
    },
    {
      description: 'Serve on a unix socket with a 1 GiB pool; JSON lines on stdout.',
      command:
        '<%= config.bin %> <%= command.id %> --file /srv/primary.img --uuid 0b9f… --socket /run/primary.nbd --pool-size 1G --json',
    },
  ];

  static override jsonLines = true;

  /** Writes its JSON Lines itself (see run); oclif must not print the result again. */
  public override logJson(): void {}

  static override flags = {
    file: primaryFile,
    uuid: primaryUuid,
    'pool-size': size({
      summary: 'Memory for writes not yet on the replica.',
      default: DEFAULT_POOL_BYTES,
      min: 1024 * 1024,
    }),
    port: Flags.integer({
      summary: 'TCP port to listen on (0 picks a free one).',
      default: 10809,
      min: 0,
      max: 65535,
    }),
    bind: Flags.string({ summary: 'Address to listen on.', default: '127.0.0.1' }),
    socket: Flags.string({
      summary: 'Listen on this unix socket instead of TCP.',
      exclusive: ['port', 'bind'],
    }),
    'control-socket': replicaControlSocket,
    'recover-concurrency': Flags.integer({
      summary: 'Regions fetched from the replica at once during a lazy restore.',
      default: DEFAULT_RECOVER_CONCURRENCY,
      min: 1,
      max: 64,
    }),
    force: Flags.boolean({
      summary:
        "Serve even if the header names another live replicator, and take the replica's lease from its holder, overwriting what it shipped after this primary's last commit (at start only: once taken over, this replicator does not take it back).",
    }),
    drain: duration({
      summary:
        'How long a stop keeps shipping what is queued to the replica. The last commit then gets as long again (at most 10s); a replica that has not answered by then is given up, and the next start copies what it lacks.',
      default: 30_000,
    }),
    'print-uri': Flags.boolean({
      summary:
        'Print the NBD URI on stdout once listening (and then the metrics URL, with --metrics-port).',
    }),
    ...metricsFlags(
      'Replication lag (the recovery point), mode, pool, dirty regions and NBD requests; 503 while the replica is not connected.',
    ),
    'log-level': Flags.string({
      summary: 'Least severe log lines written to stderr.',
      options: [...LOG_LEVELS],
      default: 'info',
    }),
    'log-format': Flags.string({
      summary: 'Log lines as "text" or "json".',
      options: [...LOG_FORMATS],
      default: 'text',
    }),
  };

  public async run(): Promise<ReplicaServeResult> {
    const f = this.flags;
    const logger = lineLogger({
      level: f['log-level'] as LogLevel,
      format: f['log-format'] as LogFormat,
      write: (line) => process.stderr.write(line),
    });
    this.interruptNotice = (sig, again) =>
      again
        ? logger.warn('interrupted again: exiting now', { signal: sig })
        : logger.info('stopping: shipping what is queued (a second signal exits at once)', {
            signal: sig,
          });
    const signal = this.interruptible();
    const server = new ReplicaServer({
      file: f.file,
      uuid: f.uuid,
      openStore: (u, o) => this.openStore(u, o),
      workerStoreOptions: this.storeOptions(),
      listen: f.socket === undefined ? { port: f.port, host: f.bind } : { path: f.socket },
      poolBytes: f['pool-size'],
      recoverConcurrency: f['recover-concurrency'],
      force: f.force,
      shipDrainMs: f.drain,
      logger,
      ...(metricsListenOf(f) === undefined ? {} : { metricsListen: metricsListenOf(f) }),
      ...(f['control-socket'] === undefined ? {} : { controlSocket: f['control-socket'] }),
    });
    await server.start();
    const uuid = server.status().uuid;
    if (this.jsonEnabled()) {
      const listening: ReplicaServeListening = {
        event: 'listening',
        uri: server.uri,
        uuid,
        mode: server.status().mode,
        controlSocket: f['control-socket'] ?? null,
        metricsUrl: server.metricsUrl ?? null,
      };
      process.stdout.write(`${JSON.stringify(listening)}\n`);
    } else if (f['print-uri']) {
      process.stdout.write(`${server.uri}\n`);
      if (server.metricsUrl !== undefined) process.stdout.write(`${server.metricsUrl}\n`);
    }
    await new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await server.close();
    const status = server.status();
    const result: ReplicaServeResult = {
      event: 'stopped',
      uri: server.uri,
      uuid,
      reason: 'interrupted',
      status: { ...status, live: false },
    };
    if (this.jsonEnabled()) process.stdout.write(`${JSON.stringify(result)}\n`);
    return result;
  }
}
