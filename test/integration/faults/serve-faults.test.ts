/**
 * Faults seen through `hyper serve` and real NBD clients.
 *
 * Damage and two writers: a damaged or missing segment makes reads of the blocks it holds
 * fail with EIO and a log line naming the object (other blocks still read); two writers never
 * both write a volume — the second serve is refused naming the holder, and a forced takeover
 * fences the first, which then acknowledges nothing more. On file:// and RGW.
 *
 * RGW behind the fault proxy: at 5% injected faults fio's crc32c-verified writes and reads go
 * through; with the store down, a FLUSH fails with EIO after bounded retries while the server
 * stays up, and once the store is back the same server commits and serves the data again.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { runJs } from '../../helpers/cli.js';
import { needS3, needTools, type S3TestConfig } from '../../helpers/env.js';
import { s3FaultProxy } from '../../helpers/fault-proxy.js';
import { run } from '../../helpers/nbd.js';
import { serve, stopServe } from '../../helpers/serve.js';
import { emptyStore, ensureBucket, s3Options, uniqueS3Url } from '../../helpers/s3.js';

const MiB = 1024 * 1024;

const qemuIo = (uri: string, ...cmds: string[]) =>
  run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);
/** qemu-io on a read-only export (it opens read-write unless told). */
const qemuIoRo = (uri: string, ...cmds: string[]) =>
  run('qemu-io', ['-r', '-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);

async function twoWriters(
  url: string,
  env: Record<string, string>,
  extra: string[],
): Promise<void> {
  const a = await serve([url, '--create', '--size', '16M', ...extra], { env });
  try {
    assert.equal((await qemuIo(a.uri, 'write -P 0x11 0 64k')).code, 0);
    // A second writer is refused, and says who holds the volume.
    const refused = await serve([url, ...extra], { env }).then(
      async (b) => {
        await stopServe(b);
        return undefined;
      },
      (e: { code: number; stderr: string }) => e,
    );
    assert.ok(refused, 'a second writable serve must be refused');
    assert.equal(refused.code, 4, refused.stderr);
    assert.match(refused.stderr, /LEASE_HELD/);
    assert.match(refused.stderr, new RegExp(`:${a.child.pid}`));
    // A forced takeover fences the first server: it acknowledges no further write.
    const b = await serve([url, '--force', ...extra], { env });
    try {
      assert.equal(
        (await qemuIo(b.uri, 'read -P 0x11 0 64k')).code,
        0,
        'the takeover sees committed data',
      );
      const late = await qemuIo(a.uri, 'write -P 0x22 1M 64k', 'flush');
      assert.notEqual(late.code, 0, `the fenced server acknowledged a write: ${late.stdout}`);
      assert.equal((await qemuIo(b.uri, 'write -P 0x33 2M 64k', 'flush')).code, 0);
      const check = await qemuIo(b.uri, 'read -P 0 1M 64k', 'read -P 0x33 2M 64k');
      assert.equal(check.code, 0, check.stdout + check.stderr);
    } finally {
      await stopServe(b);
    }
  } finally {
    await stopServe(a);
  }
}

describe('serve: damage and two writers', () => {
  it('reads of damaged or missing segments fail with EIO naming the object; others still read', async (t) => {
    if (!needTools(t, 'qemu-io')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-damage-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const url = `file://${dir}/vol/`;
    await mkdir(join(dir, 'vol'));
    const store = await openStore(url);
    await Volume.create(store, { size: 16 * MiB });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, Buffer.alloc(1 * MiB, 0xa1));
    await v.flush();
    await v.write(4 * MiB, Buffer.alloc(1 * MiB, 0xb2));
    await v.flush();
    await v.close();
    const segs = (await readdir(join(dir, 'vol', 'seg'))).sort();
    const [first, second] = segs.slice(-2) as [string, string];
    const path = join(dir, 'vol', 'seg', second);
    const bytes = await readFile(path);
    bytes.writeUInt8((bytes.at(-4096) ?? 0) ^ 0xff, bytes.length - 4096);
    await writeFile(path, bytes);
    const s = await serve([url, '--read-only']);
    try {
      const bad = await qemuIoRo(s.uri, 'read -P 0xb2 4M 1M');
      assert.notEqual(bad.code, 0);
      assert.match(bad.stdout + bad.stderr, /Input\/output error/);
      assert.ok(
        s.stderr().includes(`seg/${second}`),
        `no log line names seg/${second}:\n${s.stderr()}`,
      );
      assert.equal(
        (await qemuIoRo(s.uri, 'read -P 0xa1 0 1M')).code,
        0,
        'blocks of other segments still read',
      );
    } finally {
      await stopServe(s);
    }
    await rm(join(dir, 'vol', 'seg', first));
    const s2 = await serve([url, '--read-only']);
    try {
      const gone = await qemuIoRo(s2.uri, 'read 0 64k');
      assert.notEqual(gone.code, 0);
      assert.ok(s2.stderr().includes(`seg/${first}`), s2.stderr());
    } finally {
      await stopServe(s2);
    }
    const check = await run(process.execPath, [runJs, 'file', 'check', url, '--deep']);
    assert.equal(check.code, 6);
    assert.ok(
      check.stdout.includes(`seg/${first}`) && check.stdout.includes(`seg/${second}`),
      check.stdout,
    );
  });

  it('two writers on file://: refused, then fenced by a forced takeover', async (t) => {
    if (!needTools(t, 'qemu-io')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-two-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await twoWriters(`file://${dir}/vol/`, {}, []);
  });

  it('two writers on RGW: refused, then fenced by a forced takeover', async (t) => {
    if (!needTools(t, 'qemu-io')) return;
    const cfg = needS3(t) as S3TestConfig | undefined;
    if (!cfg) return;
    await ensureBucket(cfg);
    const url = uniqueS3Url(cfg, 'two-writers');
    t.after(async () => emptyStore(await openStore(url, s3Options(cfg))));
    await twoWriters(
      url,
      {
        AWS_ACCESS_KEY_ID: cfg.accessKeyId,
        AWS_SECRET_ACCESS_KEY: cfg.secretAccessKey,
        AWS_REGION: cfg.region,
      },
      ['--endpoint', cfg.endpoint],
    );
  });
});

describe('serve on S3 under injected faults', () => {
  const faulty = s3FaultProxy(11);

  it('fio verifies through 5% faults; a down store gives EIO, the server stays up and recovers', async (t) => {
    if (!needTools(t, 'fio', 'qemu-io')) return;
    const c = needS3(t);
    if (!c) return;
    const { proxy, endpoint } = faulty();
    const url = uniqueS3Url(c, 'serve-faults');
    t.after(async () => emptyStore(await openStore(url, s3Options(c))));
    const env = {
      AWS_ACCESS_KEY_ID: c.accessKeyId,
      AWS_SECRET_ACCESS_KEY: c.secretAccessKey,
      AWS_REGION: c.region,
    };
    proxy.rates = {};
    const s = await serve([url, '--create', '--size', '64M', '--endpoint', endpoint], { env });
    try {
      proxy.rates = {
        slow: 0.05,
        latencyMs: 20,
        slowDown: 0.02,
        internalError: 0.01,
        resetBefore: 0.01,
        resetAfter: 0.005,
        truncate: 0.005,
      };
      const before = { ...proxy.counts };
      const w = await run(
        'fio',
        [
          '--name=faults',
          '--ioengine=nbd',
          `--uri=${s.uri}`,
          '--rw=randwrite',
          '--bs=64k',
          '--iodepth=8',
          '--size=32m',
          '--verify=crc32c',
          '--verify_fatal=1',
          '--fsync=16',
        ],
        { timeoutMs: 300_000 },
      );
      assert.equal(w.code, 0, w.stdout + w.stderr);
      const k = proxy.counts;
      const faults =
        k.slowDown +
        k.internalError +
        k.resetBefore +
        k.resetAfter +
        k.truncate -
        (before.slowDown +
          before.internalError +
          before.resetBefore +
          before.resetAfter +
          before.truncate);
      assert.ok(
        faults >= 2,
        `faults injected under fio: ${faults} of ${k.requests - before.requests} requests`,
      );
      proxy.rates = {};
      // Store down: the write is accepted into memory, its FLUSH cannot be committed → EIO.
      proxy.down = true;
      const t0 = Date.now();
      const down = await run(
        'qemu-io',
        ['-f', 'raw', '-c', 'write -P 0x5c 48M 1M', '-c', 'flush', s.uri],
        { timeoutMs: 120_000 },
      );
      assert.match(
        down.stdout + down.stderr,
        /flush failed: Input\/output error|Input\/output error/,
      );
      assert.ok(Date.now() - t0 < 90_000, 'retries are bounded');
      assert.equal(s.child.exitCode, null, 'the server is still running');
      // Back up: the same server commits what it holds and serves it.
      proxy.down = false;
      const up = await run(
        'qemu-io',
        ['-f', 'raw', '-c', 'flush', '-c', 'read -P 0x5c 48M 1M', s.uri],
        { timeoutMs: 120_000 },
      );
      assert.equal(up.code, 0, up.stdout + up.stderr);
      assert.doesNotMatch(up.stdout, /failed/);
    } finally {
      proxy.down = false;
      proxy.rates = {};
      assert.equal(await stopServe(s), 0, s.stderr());
    }
    // A fresh read-only server sees the committed data.
    const ro = await serve([url, '--read-only', '--endpoint', endpoint], { env });
    try {
      const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5c 48M 1M', ro.uri]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
    } finally {
      await stopServe(ro);
    }
  });
});
