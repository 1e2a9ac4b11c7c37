/**
 * `hyper serve` as a child process (the real bin/run.js), started on a free port with
 * --print-uri: resolves once it prints its URI, rejects (with its exit code and stderr) if it
 * exits first or does not start in time.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { fileUrl, hyper, runJs, show, tempDir } from './cli.js';

export interface Served {
  child: ChildProcess;
  /** The first export's URI. */
  uri: string;
  /** With --metrics-port: the metrics URL serve printed after the export URIs. */
  metrics?: string;
  stderr: () => string;
  /** Resolves with the exit code (128 + signal number when killed). */
  exit: Promise<number>;
}

export interface ServeError extends Error {
  code: number;
  stderr: string;
}

export function serve(
  args: string[],
  options: {
    env?: Record<string, string>;
    timeoutMs?: number;
    /** Run this `hyper` executable (an installed one) instead of `node bin/run.js`. */
    bin?: string;
    cwd?: string;
    /** Only `env`, not this process's environment too. */
    cleanEnv?: boolean;
  } = {},
): Promise<Served> {
  const argv = ['serve', ...args, '--port', '0', '--print-uri'];
  const child = spawn(options.bin ?? process.execPath, options.bin ? argv : [runJs, ...argv], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: options.cleanEnv
      ? { NO_COLOR: '1', ...options.env }
      : { ...process.env, NO_COLOR: '1', ...options.env },
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
  });
  let err = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exit = new Promise<number>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? (signal === 'SIGKILL' ? 137 : 128))),
  );
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(Object.assign(new Error(`serve did not start: ${err}`), { code: -1, stderr: err }));
    }, options.timeoutMs ?? 45_000);
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const lines = out.split('\n');
      const line = lines.find((l) => l.startsWith('nbd'));
      const metrics = lines.find((l) => /^http:\/\/\S+\/metrics$/.test(l));
      if (line && (metrics !== undefined || !args.includes('--metrics-port'))) {
        clearTimeout(timer);
        resolve({
          child,
          uri: line.trim(),
          ...(metrics === undefined ? {} : { metrics }),
          stderr: () => err,
          exit,
        });
      }
    });
    void exit.then((code) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`serve exited ${code}: ${err}`), { code, stderr: err }));
    });
  });
}

/** Stop a server (SIGTERM: drain, flush, release; SIGKILL: a crash) and return its exit code. */
export async function stopServe(
  s: Served,
  signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM',
): Promise<number> {
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill(signal);
  return s.exit;
}

/**
 * A 64 MiB file:// volume created in a fresh temporary directory, with the URL of a WAL and
 * the path of a control socket beside it: what a test of `serve --wal-url --control-socket`
 * and the commands it answers starts from.
 */
export async function volumeToServe(
  t: TestContext,
): Promise<{ dir: string; url: string; wal: string; sock: string }> {
  const dir = await tempDir(t);
  const url = fileUrl(join(dir, 'vol'));
  const c = await hyper(['file', 'create', url, '--size', '64M']);
  assert.equal(c.code, 0, show(c));
  return { dir, url, wal: fileUrl(join(dir, 'wal')), sock: join(dir, 'control.sock') };
}
