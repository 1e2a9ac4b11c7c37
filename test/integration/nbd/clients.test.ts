import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { needTools } from '../../helpers/env.js';
import { memoryExport, run, startServer, type RunningServer } from '../../helpers/nbd.js';

const MiB = 1024 * 1024;

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

for (const unix of [false, true]) {
  describe(`real clients move real data (${unix ? 'unix socket' : 'TCP'})`, () => {
    let s: RunningServer;
    let dir: string;
    const disk = memoryExport('disk', { size: 256 * MiB });
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'hyper-nbd-clients-'));
      s = await startServer([disk, memoryExport('scratch', { size: 64 * MiB })], { unix });
    });
    after(async () => {
      await s.close();
      await rm(dir, { recursive: true, force: true });
    });

    it('qemu-io writes patterns at scattered offsets and verifies them', async (t) => {
      if (!needTools(t, 'qemu-io')) return;
      const offsets = [0, 16384, 65536 - 512, 1 * MiB + 123, 17 * MiB + 4095, 63 * MiB];
      const writes = offsets.flatMap((o, i) => [
        '-c',
        `write -P 0x${(0x11 * (i + 1)).toString(16)} ${o} 8k`,
      ]);
      const reads = offsets.flatMap((o, i) => [
        '-c',
        `read -P 0x${(0x11 * (i + 1)).toString(16)} ${o} 8k`,
      ]);
      const w = await run('qemu-io', ['-f', 'raw', ...writes, s.uriFor('scratch')]);
      assert.equal(w.code, 0, w.stderr + w.stdout);
      const r = await run('qemu-io', [
        '-f',
        'raw',
        ...reads,
        '-c',
        'read -P 0 32M 1M',
        s.uriFor('scratch'),
      ]);
      assert.equal(r.code, 0, r.stderr + r.stdout);
      assert.doesNotMatch(r.stdout, /Pattern verification failed/);
      // A wrong pattern must fail (the check can fail).
      const bad = await run('qemu-io', [
        '-f',
        'raw',
        '-c',
        'read -P 0x99 0 4k',
        s.uriFor('scratch'),
      ]);
      assert.match(bad.stdout + bad.stderr, /Pattern verification failed/);
    });

    it('nbdcopy copies a 256 MiB random image in and out unchanged; qemu-img compare agrees', async (t) => {
      if (!needTools(t, 'nbdcopy', 'qemu-img')) return;
      const src = join(dir, 'src.img');
      const back = join(dir, 'back.img');
      await writeFile(
        src,
        Buffer.concat([randomBytes(128 * MiB), Buffer.alloc(64 * MiB), randomBytes(64 * MiB)]),
      );
      const inn = await run('nbdcopy', [src, s.uriFor('disk')], { timeoutMs: 120_000 });
      assert.equal(inn.code, 0, inn.stderr);
      const out = await run('nbdcopy', [s.uriFor('disk'), back], { timeoutMs: 120_000 });
      assert.equal(out.code, 0, out.stderr);
      assert.equal(await sha256(back), await sha256(src));
      // Both went through reads into memory the server picks (input.ts), not 'data' events.
      const conns = s.logs.filter((l) => l.msg === 'nbd connection');
      assert.ok(conns.length >= 2, `${conns.length} connections logged`);
      for (const c of conns) assert.equal(c.fields?.reads, 'in place', JSON.stringify(c));
      const cmp = await run(
        'qemu-img',
        ['compare', '-f', 'raw', '-F', 'raw', src, s.uriFor('disk')],
        { timeoutMs: 120_000 },
      );
      assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
      // nbdcopy leaves the zero middle as holes: the map shows it.
      const map = await run('nbdinfo', ['--map', '--totals', s.uriFor('disk')]);
      assert.match(map.stdout, /hole,zero/);
      // Change one byte on the server: compare must now fail.
      const poke = await run('qemu-io', [
        '-f',
        'raw',
        '-c',
        'write -P 0x5a 200M 1',
        s.uriFor('disk'),
      ]);
      assert.equal(poke.code, 0, poke.stderr);
      const cmp2 = await run(
        'qemu-img',
        ['compare', '-f', 'raw', '-F', 'raw', src, s.uriFor('disk')],
        { timeoutMs: 120_000 },
      );
      assert.equal(cmp2.code, 1, cmp2.stdout + cmp2.stderr);
    });

    it('fio with the nbd engine writes and verifies crc32c at queue depth 16', async (t) => {
      if (!needTools(t, 'fio')) return;
      const r = await run(
        'fio',
        [
          '--name=verify',
          '--ioengine=nbd',
          `--uri=${s.uriFor('scratch')}`,
          '--rw=randwrite',
          '--bs=4k',
          '--iodepth=16',
          '--size=32M',
          '--verify=crc32c',
          '--do_verify=1',
          '--verify_fatal=1',
          '--output-format=json',
        ],
        { timeoutMs: 120_000 },
      );
      assert.equal(r.code, 0, r.stderr);
      const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as {
        jobs: { error: number; write: { total_ios: number }; read: { total_ios: number } }[];
      };
      assert.equal(j.jobs[0]!.error, 0);
      assert.equal(j.jobs[0]!.write.total_ios, 8192);
      assert.equal(j.jobs[0]!.read.total_ios, 8192);
    });
  });
}
