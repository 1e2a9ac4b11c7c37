/**
 * Where the daemon keeps its control socket and state file when not told: the places
 * systemd prepares for a service (RuntimeDirectory=, StateDirectory=), else the usual ones
 * for root and for other users.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';

type Env = Record<string, string | undefined>;

const isRoot = (): boolean => process.getuid?.() === 0;

/**
 * `$HYPER_CONTROL_SOCKET`, else `$RUNTIME_DIRECTORY/control.sock` under systemd, else
 * `/run/hyper/control.sock` for root, `$XDG_RUNTIME_DIR/hyper/control.sock` for other users
 * (`/tmp/hyper-UID/control.sock` without it).
 */
export function defaultControlSocket(env: Env = process.env, root = isRoot()): string {
  if (env.HYPER_CONTROL_SOCKET) return env.HYPER_CONTROL_SOCKET;
  const runtime = env.RUNTIME_DIRECTORY?.split(':')[0];
  if (runtime) return join(runtime, 'control.sock');
  if (root) return '/run/hyper/control.sock';
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'hyper', 'control.sock');
  return join('/tmp', `hyper-${process.getuid?.() ?? 'user'}`, 'control.sock');
}

/**
 * `$STATE_DIRECTORY/daemon.json` under systemd, else `/var/lib/hyper/daemon.json` for root,
 * `$XDG_STATE_HOME/hyper/daemon.json` (default `~/.local/state/hyper/daemon.json`) for others.
 */
export function defaultStateFile(env: Env = process.env, root = isRoot()): string {
  const state = env.STATE_DIRECTORY?.split(':')[0];
  if (state) return join(state, 'daemon.json');
  if (root) return '/var/lib/hyper/daemon.json';
  const base = env.XDG_STATE_HOME || join(env.HOME || homedir(), '.local', 'state');
  return join(base, 'hyper', 'daemon.json');
}
