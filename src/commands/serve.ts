import { Flags } from '@oclif/core';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { BaseCommand } from '../base-command.js';
import {
  CHECKPOINT_REF_FORMS,
  checkpointRefJson,
  parseCheckpointRef,
  type CheckpointRefJson,
} from '../cli/checkpoint-ref.js';
import { HyperError, toHyperError } from '../errors.js';
import { size, volumeUrl } from '../flags.js';
import type { ObjectStore } from '../format/store/index.js';
import { listVolumes } from '../format/volume/admin.js';
import { MAX_VOLUME_SIZE, type CheckpointRef, type Logger } from '../format/volume/types.js';
import { Volume } from '../format/volume/volume.js';
import type { NbdLogger } from '../nbd/device.js';
import { NbdServer, type NbdExport } from '../nbd/server.js';
import { VolumeDevice } from '../volume-device.js';

export interface ServeResult {
  /** URIs clients connect to, one per export. */
  uris: string[];
  exports: { name: string; url: string; readOnly: boolean }[];
  at?: CheckpointRefJson;
  /** Why the server stopped. */
  stopped: string;
}

/** Log lines on stderr: `2026-…Z info message {"field":…}`. */
function stderrLogger(verbose: boolean): Logger & NbdLogger {
  const line =
    (level: string) =>
    (msg: string, fields?: Record<string, unknown>): void => {
      const f =
        fields === undefined || Object.keys(fields).length === 0
          ? ''
          : ` ${JSON.stringify(fields)}`;
      process.stderr.write(`${new Date().toISOString()} ${level} ${msg}${f}\n`);
    };
  return {
    debug: verbose ? line('debug') : () => undefined,
    info: line('info'),
    warn: line('warn'),
    error: line('error'),
  };
}

export default class Serve extends BaseCommand<typeof Serve> {
  static override summary = 'Serve volumes over NBD (Network Block Device).';

  static override description = `Serves the volume at the URL as an NBD export, or every volume below a prefix URL as one export each (named by its path below the prefix). A writable export takes the volume's lease, so a second writer fails naming the holder; --read-only and --at serve without a lease, and any number of hosts can serve the same past checkpoint. Runs in the foreground and logs to stderr; on SIGINT or SIGTERM it stops accepting connections, answers requests in flight, flushes and releases the lease.`;

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
      description: 'Serve every volume under a prefix; print the result as JSON when stopped.',
      command: '<%= config.bin %> <%= command.id %> s3://bucket/vols/ --port 0 --print-uri --json',
    },
  ];

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
    force: Flags.boolean({
      summary:
        'Take the lease even if another writer holds it (that writer is fenced and can commit nothing more).',
    }),
    foreground: Flags.boolean({
      summary:
        'Stay in the foreground and log to stderr. This is what serve always does; the flag is accepted for nbdkit/qemu-nbd habits (run it under systemd or `&` to background it).',
    }),
    verbose: Flags.boolean({
      char: 'v',
      summary: 'Log every connection and refused request (debug) on stderr.',
    }),
  };

  public async run(): Promise<ServeResult> {
    const { url } = this.args;
    const flags = this.flags;
    const logger = stderrLogger(flags.verbose);
    const at: CheckpointRef | undefined =
      flags.at === undefined ? undefined : parseCheckpointRef(flags.at, { name: '--at' });
    const readOnly = flags['read-only'] || at !== undefined;
    if (flags.create && (readOnly || at !== undefined)) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        '--create cannot be combined with --read-only or --at',
      );
    }
    const signal = this.interruptible();
    const store = await this.openStore(url, { mkdir: flags.create });
    if (flags.create) {
      try {
        await Volume.create(store, { size: flags.size, signal });
        logger.info('created volume', { url, size: flags.size });
      } catch (e) {
        if (!(e instanceof HyperError && e.code === 'VOLUME_EXISTS')) throw e;
      }
    }

    // A local WAL directory is created like the volume's own (--create).
    if (flags['wal-url'] !== undefined) await this.openStore(flags['wal-url'], { mkdir: true });
    const holder = `hyper-serve@${hostname()}:${process.pid}`;
    const openOptions = {
      readOnly,
      holder,
      logger,
      signal,
      force: flags.force,
      ...(at === undefined ? {} : { at }),
      ...(flags['wal-url'] === undefined ? {} : { walUrl: flags['wal-url'] }),
      // Parent volumes of clones and the WAL are opened with the same --endpoint/--region.
      openStore: (u: string) => this.openStore(u),
    };
    const opened = new Map<string, VolumeDevice>();
    const openVolume = async (name: string, sub: ObjectStore): Promise<VolumeDevice> => {
      const volume = await Volume.open(sub, openOptions);
      const dev = new VolumeDevice(volume, { readOnly });
      opened.set(name, dev);
      return dev;
    };

    // A volume URL serves one export; a prefix serves every volume found below it.
    const listing = await listVolumes(store, { signal });
    const exports: NbdExport[] = [];
    const described: ServeResult['exports'] = [];
    const single = listing.length === 1 && listing[0]!.name === '';
    if (listing.length === 0) {
      throw new HyperError('not-found', 'VOLUME_NOT_FOUND', `No volume at or below ${url}`, {
        suggestion:
          'Create one with "hyper file create", or pass --create --size to serve a new one.',
      });
    }
    if (single) {
      const name = url.replace(/\/+$/, '').split('/').pop() ?? '';
      const dev = await openVolume(name, store); // eagerly: the lease is taken (or refused) now
      exports.push({ name, description: url, open: () => dev });
      described.push({ name, url, readOnly: dev.capabilities.readOnly });
    } else {
      for (const v of listing) {
        if (v.error !== undefined) {
          logger.warn('skipping a volume that cannot be read', { url: v.url, error: v.error });
          continue;
        }
        const name = v.name.replace(/\/+$/, '');
        let pending: Promise<VolumeDevice> | undefined;
        // Opened on first use (and kept): serving a prefix of many volumes takes no lease
        // on the ones nobody connects to.
        exports.push({
          name,
          description: v.url,
          open: () => {
            pending ??= openVolume(name, store.sub(v.name)).catch((e: unknown) => {
              pending = undefined;
              throw e;
            });
            return pending;
          },
        });
        described.push({ name, url: v.url, readOnly });
      }
    }

    let tls: { cert: Buffer; key: Buffer; require: boolean } | undefined;
    const certDir = flags['tls-certificates'];
    if (certDir !== undefined) {
      try {
        tls = {
          cert: await readFile(join(certDir, 'server-cert.pem')),
          key: await readFile(join(certDir, 'server-key.pem')),
          require: flags.tls === 'require',
        };
      } catch (e) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Cannot read the TLS certificate or key in ${certDir}: ${(e as Error).message}`,
          {
            suggestion: 'The directory must hold server-cert.pem and server-key.pem (PEM).',
          },
        );
      }
    }
    const server = new NbdServer({ exports, logger, ...(tls === undefined ? {} : { tls }) });
    const addr =
      flags.socket !== undefined
        ? await server.listen({ path: flags.socket })
        : await server.listen({ port: flags.port, host: flags.bind });
    const scheme = tls?.require ? 'nbds' : 'nbd';
    const uriFor = (name: string): string =>
      addr.path !== undefined
        ? `${scheme}+unix:///${encodeURIComponent(name)}?socket=${addr.path}`
        : `${scheme}://${addr.host?.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}/${encodeURIComponent(name)}`;
    const uris = exports.map((e) => uriFor(e.name));
    if (flags['print-uri']) {
      for (const u of uris)
        process.stdout.write(this.jsonEnabled() ? `${JSON.stringify({ uri: u })}\n` : `${u}\n`);
    }
    logger.info(
      `serving ${exports.length} export${exports.length === 1 ? '' : 's'} ${readOnly ? 'read-only' : 'read-write'}`,
      {
        uris,
      },
    );

    // Run until SIGINT/SIGTERM (the base command turns them into this abort signal). A volume
    // whose lease is lost keeps being served, but its writes fail (EPERM) and are logged.
    const stopped = await new Promise<string>((resolve) => {
      if (signal.aborted) resolve('interrupted');
      signal.addEventListener('abort', () => resolve('interrupted'), { once: true });
    });
    logger.info('stopping: finishing requests in flight', { connections: server.connections });
    await server.close(10_000);
    let failure: unknown;
    for (const [name, dev] of opened) {
      try {
        await dev.flush();
        await dev.close();
        logger.info('closed export', { export: name });
      } catch (e) {
        logger.error('could not flush and close an export', {
          export: name,
          error: toHyperError(e).message,
        });
        failure ??= e;
      }
    }
    if (failure !== undefined) throw toHyperError(failure);
    const result: ServeResult = {
      uris,
      exports: described,
      stopped,
      ...(at === undefined ? {} : { at: checkpointRefJson(at) }),
    };
    return result;
  }
}
