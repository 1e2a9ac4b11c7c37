import { Flags } from '@oclif/core';
import { BaseCommand } from '../base-command.js';
import {
  CHECKPOINT_REF_FORMS,
  checkpointRefJson,
  parseCheckpointRef,
} from '../cli/checkpoint-ref.js';
import type { ServeListening, ServeResult } from '../cli/vocabulary.js';
import {
  compactionFlags,
  compactionOf,
  metricsFlags,
  metricsListenOf,
  tuningFlags,
  tuningOf,
  size,
  volumeUrl,
} from '../flags.js';
import { COMPRESSIONS, type Compression } from '../format/codec/block.js';
import { CIPHERS } from '../format/codec/seal.js';
import { DEFAULT_COMPRESSION, MAX_VOLUME_SIZE } from '../format/volume/types.js';
import {
  LOG_FORMATS,
  LOG_LEVELS,
  lineLogger,
  type LogFormat,
  type LogLevel,
} from '../serve/logger.js';
import { VolumeServer, type ServeOptions } from '../serve/server.js';

export type { ServeListening, ServeResult };

export default class Serve extends BaseCommand<typeof Serve> {
  static override summary = 'Serve volumes over NBD (Network Block Device).';

  static override description = `Serves the volume at the URL as an NBD export, or every volume below a prefix URL as one export each (named by its path below the prefix). A writable export takes the volume's lease, so a second writer fails naming the holder; --read-only and --at serve without a lease, and any number of hosts can serve the same past checkpoint. Runs in the foreground and logs to stderr. With --json, stdout is JSON Lines: a {"event":"listening",…} line once listening and a {"event":"stopped",…} line at the end. On SIGINT or SIGTERM it stops accepting connections, answers requests in flight, flushes and releases the lease.`;

  static override examples = [
    {
      description: 'Serve a volume on the default port (127.0.0.1:10809).',
      command:
        '<%= config.bin %> <%= command.id %> s3://bucket/vols/vm1/ --endpoint http://127.0.0.1:7480',
    },
    {
      description: 'Create a 10 GiB volume if missing and serve it on a unix socket.',
      command:
        '<%= config.bin %> <%= command.id %> file:///srv/vols/scratch/ --create --size 10G --socket /run/hyper.sock',
    },
    {
      description: "Serve yesterday's state read-only and print the URI.",
      command: '<%= config.bin %> <%= command.id %> file:///srv/vols/db/ --at 1d --print-uri',
    },
    {
      description:
        'Expose Prometheus metrics on port 9810 and log JSON lines (one per event, with a connection id).',
      command:
        '<%= config.bin %> <%= command.id %> file:///srv/vols/db/ --metrics-port 9810 --log-format json',
    },
    {
      description: 'Serve every volume under a prefix; print the result as JSON when stopped.',
      command: '<%= config.bin %> <%= command.id %> s3://bucket/vols/ --port 0 --print-uri --json',
    },
  ];

  static override jsonLines = true;

  /** serve writes its JSON Lines itself (see run); oclif must not print the result again. */
  public override logJson(): void {}

  static override args = {
    url: volumeUrl({ required: true }),
  };

  static override flags = {
    port: Flags.integer({
      summary: 'TCP port to listen on (0 picks a free one).',
      default: 10809,
      min: 0,
      max: 65535,
    }),
    bind: Flags.string({
      summary: 'Address to listen on.',
      default: '127.0.0.1',
      helpValue: '<address>',
    }),
    socket: Flags.string({
      summary: 'Listen on this unix socket instead of TCP.',
      helpValue: '<path>',
      exclusive: ['port', 'bind'],
    }),
    'read-only': Flags.boolean({ summary: 'Serve read-only (no lease is taken).' }),
    at: Flags.string({
      summary: `Serve a past checkpoint read-only: ${CHECKPOINT_REF_FORMS}.`,
      helpValue: '<checkpoint>',
    }),
    create: Flags.boolean({
      summary: 'Create the volume first if it does not exist (needs --size).',
      dependsOn: ['size'],
    }),
    size: size({
      summary: 'Size of a volume created by --create.',
      min: 512,
      max: MAX_VOLUME_SIZE,
      multipleOf: 512,
    }),
    compression: Flags.string({
      summary: `Compression of a volume created by --create: zstd, lz4 or none (default ${DEFAULT_COMPRESSION}).`,
      options: [...COMPRESSIONS],
      dependsOn: ['create'],
    }),
    encryption: Flags.string({
      summary: `Encrypt a volume created by --create with the key of --key-file: ${CIPHERS.join(' or ')}.`,
      options: [...CIPHERS],
      dependsOn: ['create'],
    }),
    dedup: Flags.boolean({
      summary: 'Deduplicate a volume created by --create (store blocks of equal content once).',
      dependsOn: ['create'],
    }),
    'print-uri': Flags.boolean({
      summary: 'Print the NBD URI of each export on stdout once listening.',
    }),
    'tls-certificates': Flags.string({
      summary: 'Offer TLS (STARTTLS) with server-cert.pem and server-key.pem from this directory.',
      helpValue: '<dir>',
    }),
    tls: Flags.string({
      summary:
        'With --tls-certificates: "on" (the default) offers TLS, "require" refuses clients that do not use it.',
      options: ['on', 'require'],
      dependsOn: ['tls-certificates'],
    }),
    'wal-url': Flags.string({
      summary:
        'Log every write to a write-ahead log at this URL before acknowledging it (recorded in the volume; one small PUT per write batch instead of a segment per FLUSH).',
      helpValue: '<url>',
      exclusive: ['read-only', 'at'],
    }),
    'wal-ack': Flags.string({
      summary:
        'With a WAL: "write" (the default) logs each write before its reply; "flush" acknowledges writes from memory and logs them at the next FLUSH or FUA write (one small PUT per FLUSH).',
      options: ['write', 'flush'],
      exclusive: ['read-only', 'at'],
    }),
    wait: Flags.boolean({
      summary:
        'If another writer holds the lease, wait until it is released or expires instead of failing.',
      exclusive: ['force', 'read-only', 'at'],
    }),
    force: Flags.boolean({
      summary:
        'Take the lease even if another writer holds it (that writer is fenced and can commit nothing more).',
    }),
    'control-socket': Flags.string({
      summary:
        'Answer "hyper compact" and "hyper snapshot create" of the served volume on this unix socket (mode 0600): they then compact it online and commit what it acknowledged, without stopping or fencing this server.',
      helpValue: '<path>',
      exclusive: ['read-only', 'at'],
    }),
    foreground: Flags.boolean({
      summary:
        'Stay in the foreground and log to stderr. This is what serve always does; the flag is accepted for nbdkit/qemu-nbd habits (run it under systemd or `&` to background it).',
    }),
    ...tuningFlags('one subdirectory per volume when serving a prefix'),
    ...compactionFlags(),
    verbose: Flags.boolean({
      char: 'v',
      summary:
        'Log every connection and refused request (debug) on stderr; same as --log-level debug.',
      exclusive: ['log-level'],
    }),
    'log-level': Flags.string({
      summary: 'Least severe log lines written to stderr.',
      options: [...LOG_LEVELS],
      default: 'info',
    }),
    'log-format': Flags.string({
      summary:
        'Log lines as "text" (time level message {fields}) or "json" (one object per line: time, level, msg and the fields; conn is the connection id).',
      options: [...LOG_FORMATS],
      default: 'text',
    }),
    ...metricsFlags(
      'Per export: NBD requests, store requests, dirty bytes, lease, caches; 503 while an export cannot make writes durable.',
    ),
  };

  public async run(): Promise<ServeResult> {
    const { url } = this.args;
    const flags = this.flags;
    const at = flags.at === undefined ? undefined : parseCheckpointRef(flags.at, { name: '--at' });
    const logger = lineLogger({
      level: flags.verbose ? 'debug' : (flags['log-level'] as LogLevel),
      format: flags['log-format'] as LogFormat,
      write: (line) => process.stderr.write(line),
    });
    // Signals are told of in the log's own format (a JSON log stays one object per line).
    this.interruptNotice = (sig, again) =>
      again
        ? logger.warn('interrupted again: exiting now', { signal: sig })
        : logger.info('stopping cleanly (a second signal exits at once)', { signal: sig });
    const signal = this.interruptible();
    const options: ServeOptions = {
      url,
      openStore: (u, o) => this.openStore(u, o),
      readOnly: flags['read-only'],
      force: flags.force,
      waitForLease: flags.wait,
      listen:
        flags.socket === undefined
          ? { port: flags.port, host: flags.bind }
          : { path: flags.socket },
      logger,
      ...(metricsListenOf(flags) === undefined ? {} : { metricsListen: metricsListenOf(flags) }),
      ...(flags['control-socket'] === undefined ? {} : { controlSocket: flags['control-socket'] }),
      signal,
      ...tuningOf(flags),
      ...compactionOf(flags),
      ...(at === undefined ? {} : { at }),
      ...(flags.create
        ? {
            create: {
              size: flags.size,
              compression: (flags.compression ?? DEFAULT_COMPRESSION) as Compression,
              ...(flags.encryption ? this.encryptionOptions(flags.encryption) : {}),
              ...(flags.dedup ? { dedup: true } : {}),
            },
          }
        : {}),
      ...(flags['wal-url'] === undefined ? {} : { walUrl: flags['wal-url'] }),
      ...(flags['wal-ack'] === undefined ? {} : { walAck: flags['wal-ack'] as 'write' | 'flush' }),
      ...(flags['tls-certificates'] === undefined
        ? {}
        : { tls: { certificates: flags['tls-certificates'], require: flags.tls === 'require' } }),
    };
    const server = new VolumeServer(options);
    await server.start();
    const atJson = at === undefined ? null : checkpointRefJson(at);
    const metricsUrl = server.metricsAddress?.url ?? null;
    const exportsJson = (): ServeResult['exports'] =>
      server.exports.map((e) => ({ name: e.name, url: e.url, readOnly: e.readOnly }));
    // --json: JSON Lines on stdout, one `listening` line now and one `stopped` line at the end.
    if (this.jsonEnabled()) {
      const listening: ServeListening = {
        event: 'listening',
        uris: server.uris,
        exports: exportsJson(),
        at: atJson,
        metricsUrl,
      };
      process.stdout.write(`${JSON.stringify(listening)}\n`);
    } else if (flags['print-uri']) {
      for (const u of server.uris) process.stdout.write(`${u}\n`);
      if (metricsUrl !== null) process.stdout.write(`${metricsUrl}\n`);
    }

    // Run until SIGINT/SIGTERM (the base command turns them into this abort signal).
    const reason = await new Promise<'interrupted'>((resolve) => {
      if (signal.aborted) resolve('interrupted');
      signal.addEventListener('abort', () => resolve('interrupted'), { once: true });
    });
    await server.close();
    const result: ServeResult = {
      event: 'stopped',
      metricsUrl,
      uris: server.uris,
      exports: exportsJson(),
      at: atJson,
      reason,
    };
    if (this.jsonEnabled()) process.stdout.write(`${JSON.stringify(result)}\n`);
    return result;
  }
}
