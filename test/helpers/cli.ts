/**
 * Running the real `hyper` CLI (bin/run.js, which loads the compiled commands from dist/)
 * in a child process, as a user would. Build first: `npm run build`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const runJs = join(repoRoot, 'bin', 'run.js');

if (!existsSync(join(repoRoot, 'dist', 'commands', 'file', 'create.js'))) {
  throw new Error(
    'dist/ is missing the compiled commands: run `npm run build` before the CLI and serve tests',
  );
}

export interface CliResult {
  /** Exit code, or 128 + signal number if the process was killed. */
  code: number;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  cwd?: string;
  /** Extra environment (merged over a copy of process.env without AWS_ENDPOINT_URL/AWS_REGION). */
  env?: Record<string, string>;
  /** Written to stdin, which is then closed. */
  input?: string;
  timeoutMs?: number;
  /** Called once the process is running (e.g. to send it a signal). */
  onSpawn?: (child: ChildProcess) => void;
}

const SIGNALS: Record<string, number> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** Run `hyper …args` and collect its exit code and output. */
export function hyper(args: string[], options: CliOptions = {}): Promise<CliResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' };
  delete env.AWS_ENDPOINT_URL;
  delete env.AWS_REGION;
  // No configuration file of the machine's: a test that wants one passes HYPER_CONFIG.
  delete env.HYPER_CONFIG;
  delete env.HYPER_PROFILE;
  env.XDG_CONFIG_HOME = '/nonexistent/hyper-test-config';
  Object.assign(env, options.env);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [runJs, ...args], {
      cwd: options.cwd ?? repoRoot,
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`hyper ${args.join(' ')} timed out\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, options.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code: code ?? 128 + (SIGNALS[signal ?? ''] ?? 0), stdout, stderr });
    });
    child.stdin.end(options.input ?? '');
    options.onSpawn?.(child);
  });
}

/** Run `hyper …args --json`, expect `code`, and parse stdout (which must be only JSON). */
export async function hyperJson<T = Record<string, unknown>>(
  args: string[],
  code = 0,
  options: CliOptions = {},
): Promise<T> {
  const r = await hyper([...args, '--json'], options);
  if (r.code !== code) {
    throw new Error(
      `hyper ${args.join(' ')} --json exited ${r.code}, expected ${code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
    );
  }
  return JSON.parse(r.stdout) as T;
}

/** Describe a result for assertion messages. */
export const show = (r: CliResult): string =>
  `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

/** A temporary directory removed when the test ends. */
export async function tempDir(t: TestContext, prefix = 'hyper-cli-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The file:// URL of a directory (with the trailing slash volumes use). */
export const fileUrl = (dir: string): string => `file://${dir.endsWith('/') ? dir : `${dir}/`}`;
