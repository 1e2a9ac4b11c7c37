/**
 * Start an NBD server in-process for a test: memory-backed exports, a free TCP port on
 * 127.0.0.1 (or a unix socket in a temp dir), and helpers to run real NBD clients against it.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type {
  BlockDevice,
  DeviceExtent,
  NbdLogger,
  WriteFlags,
  ZeroFlags,
} from '../../src/nbd/device.js';
import { NbdServer, type NbdExport, type NbdServerOptions } from '../../src/nbd/server.js';
import { MemoryDevice, type MemoryDeviceOptions } from '../../src/nbd/testing/memory-device.js';

/**
 * A BlockDevice that passes every call to an in-memory device (`inner`, for setting bytes
 * and reading counters): tests subclass it and override the calls they make slow or fail.
 */
export class WrappedMemoryDevice implements BlockDevice {
  readonly inner: MemoryDevice;
  constructor(size: number) {
    this.inner = new MemoryDevice({ size });
  }
  get size(): number {
    return this.inner.size;
  }
  get blockSize(): BlockDevice['blockSize'] {
    return this.inner.blockSize;
  }
  get capabilities(): BlockDevice['capabilities'] {
    return this.inner.capabilities;
  }
  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }
  write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    return this.inner.write(offset, data, flags);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offset: number, length: number, flags: WriteFlags): Promise<void> {
    return this.inner.trim(offset, length, flags);
  }
  zero(offset: number, length: number, flags: ZeroFlags): Promise<void> {
    return this.inner.zero(offset, length, flags);
  }
  extents(offset: number, length: number): Promise<DeviceExtent[]> {
    return this.inner.extents(offset, length);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

export interface RunningServer {
  server: NbdServer;
  /** nbd:// URI of the default export (or nbd+unix:// for a unix socket). */
  uri: string;
  /** URI of a named export. */
  uriFor(name: string): string;
  port?: number;
  socketPath?: string;
  logs: { level: string; msg: string; fields?: Record<string, unknown> }[];
  close(): Promise<void>;
}

export function memoryExport(
  name: string,
  options: MemoryDeviceOptions,
  description?: string,
): NbdExport & { device: MemoryDevice } {
  const device = new MemoryDevice(options);
  return {
    name,
    device,
    open: () => device,
    ...(description === undefined ? {} : { description }),
  };
}

export function deviceExport(name: string, device: BlockDevice): NbdExport {
  return { name, open: () => device };
}

export async function startServer(
  exports: NbdExport[],
  options: Omit<NbdServerOptions, 'exports'> & { unix?: boolean } = {},
): Promise<RunningServer> {
  const logs: RunningServer['logs'] = [];
  const rec =
    (level: string) =>
    (msg: string, fields?: Record<string, unknown>): void => {
      logs.push(fields === undefined ? { level, msg } : { level, msg, fields });
      if (process.env.HYPER_NBD_TEST_LOG === '1')
        process.stderr.write(`${level} ${msg} ${JSON.stringify(fields ?? {})}\n`);
    };
  const logger: NbdLogger = {
    debug: rec('debug'),
    info: rec('info'),
    warn: rec('warn'),
    error: rec('error'),
  };
  const server = new NbdServer({ logger, ...options, exports });
  if (options.unix) {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-nbd-'));
    const path = join(dir, 'nbd.sock');
    await server.listen({ path });
    const uriFor = (name: string): string =>
      `nbd+unix:///${encodeURIComponent(name)}?socket=${path}`;
    return {
      server,
      uri: uriFor(''),
      uriFor,
      socketPath: path,
      logs,
      close: async () => {
        await server.close(2000);
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  const addr = await server.listen({ port: 0, host: '127.0.0.1' });
  const port = addr.port!;
  const uriFor = (name: string): string => `nbd://127.0.0.1:${port}/${encodeURIComponent(name)}`;
  return { server, uri: uriFor(''), uriFor, port, logs, close: () => server.close(2000) };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a command (asynchronously: the in-process server must keep serving) with a timeout. */
export function run(
  cmd: string,
  args: string[],
  options: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: options.env ?? process.env,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} timed out; stderr: ${stderr}`));
    }, options.timeoutMs ?? 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => undefined); // a child that exits without reading stdin
    child.stdin.end(options.input ?? '');
  });
}

/** nbdsh with the system python first on PATH (see TESTING.md). */
export function nbdsh(script: string, timeoutMs = 60_000): Promise<RunResult> {
  const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };
  return run('nbdsh', ['-c', script], { timeoutMs, env });
}
