/**
 * Running the daemon as a process: the store opener it maps volumes with, socket activation,
 * systemd notification, and the signals (SIGHUP reloads, SIGINT/SIGTERM stop). `hyper daemon`
 * is a thin shell around `runDaemon`.
 */
import { readFile } from 'node:fs/promises';
import { HyperError } from '../errors.js';
import { openStore, parseStoreUrl, type ObjectStore } from '../format/store/index.js';
import { storeTuningOf, type StoreTuning } from '../format/store/types.js';
import type { ServeLogger } from '../serve/logger.js';
import type { ListenTarget, VolumeTuning } from '../serve/server.js';
import type { LsResult } from '../cli/vocabulary.js';
import { Daemon, type DaemonOptions } from './daemon.js';
import { inheritedSockets, systemdNotifier } from './systemd.js';
import { makeDirs } from '../make-dirs.js';

export interface RunDaemonOptions {
  controlSocket: string;
  /** Group name or id given the control socket (mode 0660). */
  controlGroup?: string;
  listen: ListenTarget;
  stateFile: string;
  configFile?: string;
  /** Store settings for mappings that name none. */
  endpoint?: string;
  region?: string;
  /** How every mapping's store is reached (payload signing, timeouts, attempts). */
  storeTuning?: StoreTuning;
  metricsPort?: number;
  metricsHost?: string;
  drainMs?: number;
  logger: ServeLogger;
  version?: string;
  /** Aborted on SIGINT/SIGTERM: the daemon stops. */
  signal: AbortSignal;
  /** Called once the daemon is ready (listening, remembered exports mapped). */
  onReady?: (status: LsResult) => void;
  /** The caches and write buffer of every export's volume (DaemonOptions.tuning). */
  tuning?: VolumeTuning;
}

/**
 * Run until `signal` aborts; resolves once the daemon has stopped, with the daemon and its
 * exports as they were just before it stopped.
 */
export async function runDaemon(o: RunDaemonOptions): Promise<LsResult> {
  const inherited = inheritedSockets();
  const gid = o.controlGroup === undefined ? undefined : await groupId(o.controlGroup);
  const options: DaemonOptions = {
    controlSocket: o.controlSocket,
    listen: inherited?.nbd === undefined ? o.listen : { fd: inherited.nbd },
    stateFile: o.stateFile,
    openStore: (url, s) =>
      openDaemonStore(url, {
        ...((s.endpoint ?? o.endpoint) ? { endpoint: s.endpoint ?? o.endpoint } : {}),
        ...((s.region ?? o.region) ? { region: s.region ?? o.region } : {}),
        ...(s.mkdir ? { mkdir: true } : {}),
        ...(o.storeTuning === undefined ? {} : storeTuningOf(o.storeTuning)),
      }),
    logger: o.logger,
    notifier: systemdNotifier(process.env, (m) => o.logger.warn(m)),
    ...(inherited?.control === undefined ? {} : { controlFd: inherited.control }),
    ...(gid === undefined ? {} : { controlGid: gid }),
    ...(o.configFile === undefined ? {} : { configFile: o.configFile }),
    ...(o.metricsPort === undefined ? {} : { metricsPort: o.metricsPort }),
    ...(o.metricsHost === undefined ? {} : { metricsHost: o.metricsHost }),
    ...(o.drainMs === undefined ? {} : { drainMs: o.drainMs }),
    ...(o.version === undefined ? {} : { version: o.version }),
    ...(o.tuning === undefined ? {} : { tuning: o.tuning }),
  };
  if (inherited !== undefined) o.logger.info('socket activated', { ...inherited });
  const daemon = new Daemon(options);
  // Handled from the start (SIGHUP would otherwise end the process); the config is read at
  // start anyway, so a SIGHUP before the daemon is ready has nothing to do.
  let ready = false;
  const onHup = (): void => {
    if (!ready) {
      o.logger.info('SIGHUP while starting: the config is being read anyway');
      return;
    }
    o.logger.info('SIGHUP: reloading the config');
    daemon
      .reload()
      .catch((e: unknown) =>
        o.logger.error('reload failed; nothing changed', { error: (e as Error).message }),
      );
  };
  process.on('SIGHUP', onHup);
  try {
    await daemon.start();
  } catch (e) {
    process.off('SIGHUP', onHup);
    throw e;
  }
  ready = true;
  await daemon.notifyReady();
  try {
    o.onReady?.({ daemon: daemon.info(), exports: daemon.list() });
    await new Promise<void>((resolve) => {
      if (o.signal.aborted) resolve();
      o.signal.addEventListener('abort', () => resolve(), { once: true });
    });
  } finally {
    process.off('SIGHUP', onHup);
  }
  const last = { daemon: daemon.info(), exports: daemon.list() };
  await daemon.stop();
  return last;
}

/** Open a store for the daemon; a file:// directory is created when `mkdir`. */
export async function openDaemonStore(
  url: string,
  o: { endpoint?: string; region?: string; mkdir?: boolean } & StoreTuning,
): Promise<ObjectStore> {
  if (o.mkdir) {
    const parsed = parseStoreUrl(url);
    if (parsed.scheme === 'file') await makeDirs(parsed.dir);
  }
  return openStore(url, {
    ...(o.endpoint === undefined ? {} : { endpoint: o.endpoint }),
    ...(o.region === undefined ? {} : { region: o.region }),
    ...storeTuningOf(o),
  });
}

/** A group name (looked up in /etc/group) or number. */
export async function groupId(group: string): Promise<number> {
  if (/^\d+$/.test(group)) return Number(group);
  const text = await readFile('/etc/group', 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new HyperError('invalid', 'INVALID_ARGUMENT', `No group named ${JSON.stringify(group)}`, {
    suggestion: 'Create it (groupadd) or pass a group id.',
  });
}
