/**
 * `hyper serve` as a user runs it: bin/run.js (compiled commands in dist/: `npm run build`;
 * without them helpers/cli.ts fails the file) in a child process on file:// volumes in a temp
 * dir, with real NBD clients.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runJs } from '../../helpers/cli.js';
import { needTools } from '../../helpers/env.js';
import { run } from '../../helpers/nbd.js';
import { selfSignedCert } from '../../helpers/tls.js';

const MiB = 1024 * 1024;

interface Served {
  proc: ChildProcess;
  uris: string[];
  stderr: () => string;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

function hyper(
  args: string[],
  timeoutMs = 60_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run(process.execPath, [runJs, ...args], {
    timeoutMs,
    env: { ...process.env, NO_COLOR: '1' },
  });
}

function serve(args: string[], exportsExpected = 1): Promise<Served> {
  const proc = spawn(process.execPath, [runJs, 'serve', ...args, '--port', '0', '--print-uri'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  let out = '';
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((res) => proc.once('exit', (code) => res(code)));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`serve did not start: ${err}`));
    }, 30_000);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited with ${code}: ${err}`));
    });
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const uris = out.split('\n').filter((l) => l.startsWith('nbd'));
      if (uris.length >= exportsExpected) {
        clearTimeout(timer);
        resolvePromise({
          proc,
          uris,
          stderr: () => err,
          stop: async () => {
            proc.kill('SIGTERM');
            const t = setTimeout(() => proc.kill('SIGKILL'), 20_000);
            const code = await exited;
            clearTimeout(t);
            return code;
          },
        });
      }
    });
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('hyper serve', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hyper-serve-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('serves a volume to real clients, holds the lease, and persists across restarts', async (t) => {
    if (!needTools(t, 'nbdinfo', 'qemu-io', 'nbdcopy')) return;
    const url = `file://${dir}/vol1/`;
    const s = await serve([url, '--create', '--size', '128M']);
    let stopped = false;
    const img = join(dir, 'img');
    const back = join(dir, 'back');
    const data = Buffer.concat([
      randomBytes(24 * MiB),
      Buffer.alloc(8 * MiB),
      randomBytes(16 * MiB),
    ]);
    try {
      assert.match(s.uris[0]!, /^nbd:\/\/127\.0\.0\.1:\d+\/vol1$/);
      const info = await run('nbdinfo', ['--json', s.uris[0]!]);
      assert.equal(info.code, 0, info.stderr);
      const e = (JSON.parse(info.stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
      assert.equal(e['export-size'], 128 * MiB);
      assert.equal(e.is_read_only, false);
      assert.equal(e.can_multi_conn, true);
      assert.equal(e.can_flush, true);
      assert.equal(e.can_fua, true);
      assert.equal(e.block_size_minimum, 512);

      // A second writer is refused, naming the holder.
      const second = await hyper(['serve', url, '--port', '0']);
      assert.equal(second.code, 4, second.stderr);
      assert.match(second.stderr, /LEASE_HELD/);
      assert.match(second.stderr, /hyper-serve@/);

      // Data in through nbdcopy, patterns through qemu-io, out again unchanged.
      await writeFile(img, data);
      const inn = await run('nbdcopy', [img, s.uris[0]!], { timeoutMs: 120_000 });
      assert.equal(inn.code, 0, inn.stderr);
      const q = await run('qemu-io', [
        '-f',
        'raw',
        '-c',
        'write -P 0x3c 100M 1M',
        '-c',
        'flush',
        '-c',
        'read -P 0x3c 100M 1M',
        '-c',
        'read -P 0 90M 1M',
        s.uris[0]!,
      ]);
      assert.equal(q.code, 0, q.stdout + q.stderr);
      assert.doesNotMatch(q.stdout, /verification failed/);
      const out = await run('nbdcopy', ['--flush', s.uris[0]!, back], { timeoutMs: 120_000 });
      assert.equal(out.code, 0, out.stderr);
      const got = await readFile(back);
      assert.equal(sha(got.subarray(0, data.length)), sha(data));
      const map = await run('nbdinfo', ['--map', s.uris[0]!]);
      assert.match(map.stdout, /hole,zero/);

      // SIGTERM: clean exit (flushed, lease released).
      assert.equal(await s.stop(), 0, s.stderr());
      stopped = true;
    } finally {
      if (!stopped) await s.stop();
    }

    // Read-only after restart: same bytes, writes refused, no lease needed.
    const ro = await serve([url, '--read-only']);
    try {
      const out = await run('nbdcopy', [ro.uris[0]!, back], { timeoutMs: 120_000 });
      assert.equal(out.code, 0, out.stderr);
      const got = await readFile(back);
      assert.equal(sha(got.subarray(0, data.length)), sha(data));
      assert.ok(got.subarray(100 * MiB, 101 * MiB).every((b) => b === 0x3c));
      const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', ro.uris[0]!]);
      assert.notEqual(w.code, 0);
      // A writer can take the volume while readers are served.
      const rw = await serve([url]);
      assert.equal(await rw.stop(), 0);
    } finally {
      await ro.stop();
    }

    // A past checkpoint by time: what was committed up to now.
    const at = await serve([url, '--at', `time:${new Date().toISOString()}`]);
    try {
      const info = await run('nbdinfo', ['--json', at.uris[0]!]);
      const e = (JSON.parse(info.stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
      assert.equal(e.is_read_only, true);
      const q = await run('qemu-io', [
        '-r',
        '-f',
        'raw',
        '-c',
        'read -P 0x3c 100M 1M',
        at.uris[0]!,
      ]);
      assert.equal(q.code, 0, q.stdout + q.stderr);
    } finally {
      await at.stop();
    }
  });

  it('serves every volume under a prefix as its own export', async (t) => {
    if (!needTools(t, 'nbdinfo', 'qemu-io')) return;
    for (const [name, size] of [
      ['a', '16M'],
      ['team/b', '32M'],
    ]) {
      const r = await hyper(['file', 'create', `file://${dir}/pfx/${name}/`, '--size', size!]);
      assert.equal(r.code, 0, r.stderr);
    }
    const s = await serve([`file://${dir}/pfx/`], 2);
    try {
      const list = await run('nbdinfo', ['--list', '--json', s.uris[0]!]);
      assert.equal(list.code, 0, list.stderr);
      const names = (JSON.parse(list.stdout) as { exports: Record<string, unknown>[] }).exports.map(
        (e) => [e['export-name'], e['export-size']],
      );
      assert.deepEqual(names, [
        ['a', 16 * MiB],
        ['team/b', 32 * MiB],
      ]);
      const b = s.uris.find((u) => u.endsWith('/team%2Fb'))!;
      const q = await run('qemu-io', [
        '-f',
        'raw',
        '-c',
        'write -P 0x77 1M 64k',
        '-c',
        'read -P 0x77 1M 64k',
        b,
      ]);
      assert.equal(q.code, 0, q.stdout + q.stderr);
    } finally {
      assert.equal(await s.stop(), 0);
    }
  });
});

describe('hyper serve with TLS', () => {
  it('--tls require: nbds:// clients work, plain ones are refused', async (t) => {
    if (!needTools(t, 'nbdinfo', 'openssl')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-serve-tls-'));
    try {
      const certs = join(dir, 'certs');
      const client = join(dir, 'client');
      await selfSignedCert(certs, client);
      const s = await serve([
        `file://${dir}/v/`,
        '--create',
        '--size',
        '8M',
        '--tls-certificates',
        certs,
        '--tls',
        'require',
      ]);
      try {
        assert.match(s.uris[0]!, /^nbds:\/\//);
        const ok = await run('nbdinfo', ['--size', `${s.uris[0]!}?tls-certificates=${client}`]);
        assert.equal(ok.code, 0, ok.stderr);
        assert.equal(ok.stdout.trim(), String(8 * MiB));
        const plain = await run('nbdinfo', ['--size', s.uris[0]!.replace(/^nbds:/, 'nbd:')]);
        assert.notEqual(plain.code, 0);
      } finally {
        assert.equal(await s.stop(), 0);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
