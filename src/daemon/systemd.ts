/**
 * The two systemd protocols a service speaks:
 *
 * - socket activation: the manager passes listening sockets as file descriptors 3, 4, …
 *   with LISTEN_PID (this process), LISTEN_FDS (how many) and LISTEN_FDNAMES
 *   (colon-separated names, from FileDescriptorName=);
 * - readiness notification (Type=notify): READY=1, RELOADING=1, STOPPING=1 and STATUS=…
 *   sent to $NOTIFY_SOCKET. That is a unix datagram socket, which Node cannot send to, so
 *   the `systemd-notify` program sends them (the unit needs NotifyAccess=all; by default
 *   systemd-notify waits until the manager has processed the message, so the sender is
 *   still alive when the manager looks it up).
 */
import { execFile } from 'node:child_process';
import { HyperError } from '../errors.js';

const SD_LISTEN_FDS_START = 3;

/** Sockets passed by the service manager, by name. */
export interface InheritedSockets {
  /** The NBD listening socket. */
  nbd?: number;
  /** The control socket. */
  control?: number;
}

type Env = Record<string, string | undefined>;

/**
 * The listening sockets this process was started with, or undefined when it was not socket
 * activated (LISTEN_PID names another process or LISTEN_FDS is unset). Sockets are picked by
 * name (`nbd`, `control`); unnamed ones (name `unknown` or no LISTEN_FDNAMES) are taken in
 * order: the first is the NBD socket, the second the control socket. The variables are
 * removed from `env` so that child processes do not see them.
 */
export function inheritedSockets(
  env: Env = process.env,
  pid = process.pid,
): InheritedSockets | undefined {
  if (env.LISTEN_FDS === undefined) return undefined;
  if (env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) !== pid) return undefined;
  const count = Number(env.LISTEN_FDS);
  if (!Number.isInteger(count) || count < 1 || count > 64) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `LISTEN_FDS=${env.LISTEN_FDS} is not a count of sockets`,
    );
  }
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  const out: InheritedSockets = {};
  const unnamed: number[] = [];
  for (let i = 0; i < count; i++) {
    const fd = SD_LISTEN_FDS_START + i;
    const name = names[i] ?? '';
    if (name === 'nbd' || name === 'control') {
      if (out[name] !== undefined) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Two sockets named "${name}" were passed (LISTEN_FDNAMES=${env.LISTEN_FDNAMES})`,
        );
      }
      out[name] = fd;
    } else {
      unnamed.push(fd);
    }
  }
  for (const fd of unnamed) {
    if (out.nbd === undefined) out.nbd = fd;
    else if (out.control === undefined) out.control = fd;
    else {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `More sockets were passed than the daemon uses (LISTEN_FDS=${count})`,
        {
          suggestion:
            'Pass one NBD socket and at most one control socket, named with FileDescriptorName=nbd / control.',
        },
      );
    }
  }
  return out;
}

/** Sends sd_notify messages when $NOTIFY_SOCKET is set; does nothing otherwise. */
export interface Notifier {
  notify(...assignments: string[]): Promise<void>;
}

export function systemdNotifier(
  env: Env = process.env,
  onError: (message: string) => void = () => undefined,
  program = 'systemd-notify',
): Notifier {
  const socket = env.NOTIFY_SOCKET;
  return {
    notify: (...assignments) => {
      if (!socket) return Promise.resolve();
      return new Promise((resolve) => {
        execFile(
          program,
          [`--pid=${process.pid}`, ...assignments],
          { env: { ...process.env, NOTIFY_SOCKET: socket }, timeout: 10_000 },
          (err, _stdout, stderr) => {
            if (err)
              onError(
                `${program} ${assignments.join(' ')} failed: ${stderr.trim() || err.message}`,
              );
            resolve();
          },
        );
      });
    },
  };
}
