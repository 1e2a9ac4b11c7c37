/**
 * `hyper daemon` as a child process (the real bin/run.js) on a free port with its own control
 * socket and state file: `startDaemon` resolves once it logs "daemon ready" (with the NBD
 * port it listens on), and `ctl` runs `hyper map|unmap|ls … --control-socket` against it.
 * `controlCall` speaks to the control socket directly, without the CLI.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { hyper, runJs, type CliOptions, type CliResult } from './cli.js';

export interface RunningDaemon {
  child: ChildProcess;
  port: number;
  controlSocket: string;
  stderr: () => string;
  /** Resolves with the exit code (128 + signal number when killed). */
  exit: Promise<number>;
  /** `hyper <args> --control-socket <this daemon's>`. */
  ctl: (args: string[], options?: CliOptions) => Promise<CliResult>;
  stop: (signal?: NodeJS.Signals) => Promise<number>;
}

export function startDaemon(
  args: string[],
  options: {
    controlSocket: string;
    env?: Record<string, string>;
    timeoutMs?: number;
    command?: string[];
  },
): Promise<RunningDaemon> {
  const command = options.command ?? [process.execPath, runJs];
  const child = spawn(
    command[0]!,
    [...command.slice(1), 'daemon', '--control-socket', options.controlSocket, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1', ...options.env } },
  );
  let err = '';
  const exit = new Promise<number>((resolve) =>
    child.once('exit', (code, signal) =>
      resolve(code ?? (signal === 'SIGKILL' ? 137 : signal === 'SIGTERM' ? 143 : 128)),
    ),
  );
  const ctl = (a: string[], o: CliOptions = {}) =>
    hyper([...a, '--control-socket', options.controlSocket], o);
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exit;
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`daemon did not start: ${err}`));
    }, options.timeoutMs ?? 45_000);
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      const m = /daemon ready .*"listen":\{(?:"port":(\d+)|"path")/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve({
          child,
          port: Number(m[1] ?? 0),
          controlSocket: options.controlSocket,
          stderr: () => err,
          exit,
          ctl,
          stop,
        });
      }
    });
    void exit.then((code) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`daemon exited ${code}: ${err}`), { code, stderr: err }));
    });
  });
}

/** One request to a daemon's control socket: the status and the JSON body it answered. */
export function controlCall(
  socketPath: string,
  method: string,
  path: string,
  body?: Buffer | string,
): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as unknown });
        } catch (e) {
          reject(e as Error);
        }
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body !== undefined) req.setHeader('content-type', 'application/json');
    req.end(body);
  });
}
