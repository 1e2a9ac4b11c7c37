import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { needTools } from '../../helpers/env.js';
import { memoryExport, run, startServer, type RunningServer } from '../../helpers/nbd.js';

const MiB = 1024 * 1024;

interface InfoJson {
  structured: boolean;
  exports: Record<string, unknown>[];
}

for (const unix of [false, true]) {
  describe(`nbdinfo against the server (${unix ? 'unix socket' : 'TCP'})`, () => {
    let s: RunningServer;
    const disk = memoryExport('disk', { size: 64 * MiB, chunkSize: 64 * 1024 }, 'scratch disk');
    const ro = memoryExport('ro', {
      size: 3 * MiB + 512,
      readOnly: true,
      blockSize: { minimum: 512, preferred: 65536 },
    });
    before(async () => {
      // Data at 1 MiB (64 KiB) and at 8 MiB (128 KiB); everything else is a hole.
      disk.device.writeSync(1 * MiB, Buffer.alloc(64 * 1024, 0xab));
      disk.device.writeSync(8 * MiB, Buffer.alloc(128 * 1024, 0xcd));
      s = await startServer([disk, ro], { unix });
    });
    after(() => s.close());

    it('reports size, flags, block sizes and description in --json', async (t) => {
      if (!needTools(t, 'nbdinfo')) return;
      const r = await run('nbdinfo', ['--json', s.uriFor('disk')]);
      assert.equal(r.code, 0, r.stderr);
      const j = JSON.parse(r.stdout) as InfoJson;
      assert.equal(j.structured, true);
      const e = j.exports[0]!;
      assert.equal(e['export-name'], 'disk');
      assert.equal(e.description, 'scratch disk');
      assert.equal(e['export-size'], 64 * MiB);
      assert.equal(e.is_read_only, false);
      assert.equal(e.can_flush, true);
      assert.equal(e.can_fua, true);
      assert.equal(e.can_trim, true);
      assert.equal(e.can_zero, true);
      assert.equal(e.can_fast_zero, true);
      assert.equal(e.can_multi_conn, true);
      assert.equal(e.block_size_minimum, 1);
      assert.equal(e.block_size_preferred, 4096);
      assert.equal(e.block_size_maximum, 32 * MiB);
      assert.deepEqual(e.contexts, ['base:allocation']);
    });

    it('reports a read-only export truthfully', async (t) => {
      if (!needTools(t, 'nbdinfo')) return;
      const r = await run('nbdinfo', ['--json', s.uriFor('ro')]);
      assert.equal(r.code, 0, r.stderr);
      const e = (JSON.parse(r.stdout) as InfoJson).exports[0]!;
      assert.equal(e['export-size'], 3 * MiB + 512);
      assert.equal(e.is_read_only, true);
      assert.equal(e.can_trim, false);
      assert.equal(e.can_zero, false);
      assert.equal(e.block_size_minimum, 512);
      assert.equal(e.block_size_preferred, 65536);
      for (const [what, code] of [
        ['readonly', 0],
        ['trim', 2],
        ['zero', 2],
        ['flush', 0],
      ] as const) {
        const c = await run('nbdinfo', ['--can', what, s.uriFor('ro')]);
        assert.equal(c.code, code, `--can ${what}`);
      }
    });

    it('answers --can for the writable export', async (t) => {
      if (!needTools(t, 'nbdinfo')) return;
      for (const what of ['flush', 'fua', 'trim', 'zero', 'multi-conn', 'cache', 'df']) {
        const c = await run('nbdinfo', ['--can', what, s.uriFor('disk')]);
        assert.equal(c.code, 0, `--can ${what}: ${c.stderr}`);
      }
      const c = await run('nbdinfo', ['--is', 'readonly', s.uriFor('disk')]);
      assert.equal(c.code, 2);
    });

    it('maps data and holes with --map', async (t) => {
      if (!needTools(t, 'nbdinfo')) return;
      const r = await run('nbdinfo', ['--map', '--json', s.uriFor('disk')]);
      assert.equal(r.code, 0, r.stderr);
      const map = (JSON.parse(r.stdout) as { offset: number; length: number; type: number }[]).map(
        (m) => [m.offset, m.length, m.type],
      );
      assert.deepEqual(map, [
        [0, 1 * MiB, 3],
        [1 * MiB, 64 * 1024, 0],
        [1 * MiB + 64 * 1024, 7 * MiB - 64 * 1024, 3],
        [8 * MiB, 128 * 1024, 0],
        [8 * MiB + 128 * 1024, 56 * MiB - 128 * 1024, 3],
      ]);
      const tot = await run('nbdinfo', ['--map', '--totals', s.uriFor('disk')]);
      assert.equal(tot.code, 0, tot.stderr);
      assert.match(tot.stdout, /^\s*196608\s+[\d.]+%\s+0\s+data$/m);
    });

    it('lists every export with --list', async (t) => {
      if (!needTools(t, 'nbdinfo')) return;
      const r = await run('nbdinfo', ['--list', '--json', s.uri]);
      assert.equal(r.code, 0, r.stderr);
      const names = (JSON.parse(r.stdout) as InfoJson).exports.map((e) => [
        e['export-name'],
        e['export-size'],
      ]);
      assert.deepEqual(names, [
        ['disk', 64 * MiB],
        ['ro', 3 * MiB + 512],
      ]);
    });

    it('refuses an unknown export name', async (t) => {
      if (!needTools(t, 'nbdinfo')) return;
      const r = await run('nbdinfo', ['--size', s.uriFor('nope')]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /nope|unknown|export/i);
      // With two exports, "" is not a default either.
      const d = await run('nbdinfo', ['--size', s.uri]);
      assert.notEqual(d.code, 0);
    });
  });
}

describe('default export', () => {
  it('maps "" to the only export', async (t) => {
    if (!needTools(t, 'nbdinfo')) return;
    const s = await startServer([memoryExport('only', { size: 5 * MiB })]);
    try {
      const r = await run('nbdinfo', ['--size', s.uri]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), String(5 * MiB));
    } finally {
      await s.close();
    }
  });
});
