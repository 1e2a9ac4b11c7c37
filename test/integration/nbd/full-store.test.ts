/**
 * A store that runs out of room, under a real server and real NBD clients: an RGW bucket over
 * its quota (set with radosgw-admin) and a `file://` volume on a full tmpfs. The client sees
 * ENOSPC ("No space left on device", which qemu's default werror=enospc turns into a paused
 * guest instead of an I/O error), not EIO or EPERM; the server keeps what it acknowledged, and
 * stores it at the next flush once there is room; the volume then reads back byte for byte.
 * Compaction, the way to make room, works on a nearly full store: it drops checkpoints and
 * deletes first, then moves blocks. A quota that outlasts the lease's TTL only lapses the
 * lease (the engine on RGW with a short TTL): nothing held is lost.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileUrl, hyper, hyperJson, show, tempDir } from '../../helpers/cli.js';
import { needPrerequisite, needS3, needTools } from '../../helpers/env.js';
import { run } from '../../helpers/nbd.js';
import { ensureBucket, radosgwAdmin, s3Options } from '../../helpers/s3.js';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { isHyperError } from '../../../src/errors.js';
import { serve, stopServe } from '../../helpers/serve.js';
import { withTmpfs } from '../../helpers/tmpfs.js';
import { recordingLogger } from '../../helpers/fillable-store.js';
import { startDaemon } from '../../helpers/daemon.js';
import { lsSchema } from '../../../src/cli/vocabulary.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** nbdsh from the system (a Python without the nbd module may come first on PATH). */
const nbdEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

/**
 * Serve `url`, write `data` with `nbdcopy --flush` while `full` holds (it must fail with
 * ENOSPC, and /healthz answer 503 naming the failing flushes), make room with `room`, flush
 * again (it must succeed, and /healthz answer 200), stop, and read the volume back with
 * `hyper file export`.
 */
async function fillThenMakeRoom(
  t: TestContext,
  url: string,
  store: string[],
  data: Buffer,
  room: () => Promise<void>,
): Promise<void> {
  const dir = await tempDir(t, 'hyper-full-store-');
  const img = join(dir, 'data.img');
  await writeFile(img, data);
  const s = await serve([url, ...store, '--metrics-port', '0']);
  const healthz = (s.metrics ?? '').replace(/metrics$/, 'healthz');
  let stderr: string;
  try {
    const copy = await run('nbdcopy', ['--flush', img, s.uri], { timeoutMs: 120_000 });
    assert.notEqual(copy.code, 0, 'the write to a full store fails');
    assert.match(copy.stderr, /No space left on device/, copy.stderr);
    const sick = await fetch(healthz);
    const why = await sick.text();
    assert.equal(sick.status, 503, why);
    assert.match(why, /^v: flushes failing for \d+ s \(\d+ failed; writes are held, not lost\): /m);

    await room();
    const flush = await run('nbdsh', ['-u', s.uri, '-c', 'h.flush()'], {
      timeoutMs: 120_000,
      env: nbdEnv,
    });
    assert.equal(flush.code, 0, `flush once there is room: ${flush.stderr}`);
    const well = await fetch(healthz);
    assert.equal(well.status, 200, await well.text());
  } finally {
    assert.equal(await stopServe(s), 0, s.stderr());
    stderr = s.stderr();
  }
  assert.match(stderr, /"code":"NO_SPACE"/, stderr);
  assert.match(stderr, /"errno":"ENOSPC"/, stderr);

  const out = join(dir, 'out.img');
  const exp = await hyper(['file', 'export', url, out, ...store]);
  assert.equal(exp.code, 0, show(exp));
  assert.equal(sha((await readFile(out)).subarray(0, data.length)), sha(data));
}

describe('a full store', () => {
  it('an RGW bucket over its quota: ENOSPC to the client, stored once the quota is lifted', async (t) => {
    const cfg = needS3(t);
    if (!cfg) return;
    if (!needTools(t, 'nbdcopy', 'nbdsh', 'radosgw-admin')) return;
    const admin = radosgwAdmin(t);
    if (!admin) return;
    const bucket = `hyper-quota-${randomBytes(4).toString('hex')}`;
    await ensureBucket(cfg, bucket);
    const url = `s3://${bucket}/v/`;
    const store = ['--endpoint', cfg.endpoint];
    const c = await hyper(['file', 'create', url, '--size', '64M', ...store]);
    assert.equal(c.code, 0, show(c));
    // 2 MiB: the volume's first objects fit, an 8 MiB segment does not.
    await admin('quota', 'set', '--quota-scope=bucket', `--bucket=${bucket}`, '--max-size=2M');
    await admin('quota', 'enable', '--quota-scope=bucket', `--bucket=${bucket}`);
    await fillThenMakeRoom(t, url, store, randomBytes(8 * MiB), () =>
      admin('quota', 'disable', '--quota-scope=bucket', `--bucket=${bucket}`),
    );
    const d = await hyper(['file', 'delete', url, '--yes', ...store]);
    assert.equal(d.code, 0, show(d));
  });

  it('an RGW quota outlasting the lease: the lease lapses, and nothing held is lost', async (t) => {
    const cfg = needS3(t);
    if (!cfg) return;
    if (!needTools(t, 'radosgw-admin')) return;
    const admin = radosgwAdmin(t);
    if (!admin) return;
    const bucket = `hyper-lapse-${randomBytes(4).toString('hex')}`;
    await ensureBucket(cfg, bucket);
    const store = await openStore(`s3://${bucket}/v/`, s3Options(cfg));
    await Volume.create(store, { size: 16 * MiB });
    const { logger, lines: warnings } = recordingLogger();
    const vol = await Volume.open(store, { leaseTtlMs: 1500, flushIntervalMs: 0, logger });
    const data = randomBytes(4 * MiB);
    try {
      await admin('quota', 'set', '--quota-scope=bucket', `--bucket=${bucket}`, '--max-size=1K');
      await admin('quota', 'enable', '--quota-scope=bucket', `--bucket=${bucket}`);
      await vol.write(0, data);
      await assert.rejects(vol.flush(), (e) => isHyperError(e, 'NO_SPACE'));
      // Past the TTL: renewals refused, the lease lapses (not lost).
      await new Promise((r) => setTimeout(r, 2500));
      assert.ok(
        warnings.some((w) => w.startsWith('lease lapsed')),
        warnings.join(' | '),
      );
      await assert.rejects(vol.flush(), (e) => isHyperError(e, 'NO_SPACE'));
      await admin('quota', 'disable', '--quota-scope=bucket', `--bucket=${bucket}`);
      await vol.flush();
      assert.ok(
        warnings.includes('lease renewed after a lapse: committing again'),
        warnings.join(' | '),
      );
    } finally {
      await admin('quota', 'disable', '--quota-scope=bucket', `--bucket=${bucket}`);
      await vol.close();
    }
    const ro = await Volume.open(store, { readOnly: true });
    try {
      assert.equal(sha(await ro.read(0, data.length)), sha(data));
    } finally {
      await ro.close();
    }
  });

  it('a file:// volume on a full file system: ENOSPC to the client, stored once it grows', async (t) => {
    if (!needTools(t, 'nbdcopy', 'nbdsh', 'mount', 'umount')) return;
    if (!needPrerequisite(t, process.getuid?.() === 0, 'needs root (mounts a small tmpfs)')) return;
    await withTmpfs(t, '4m', async (mnt) => {
      const url = fileUrl(join(mnt, 'v'));
      const c = await hyper(['file', 'create', url, '--size', '64M']);
      assert.equal(c.code, 0, show(c));
      await fillThenMakeRoom(t, url, [], randomBytes(16 * MiB), async () => {
        const r = await run('mount', ['-o', 'remount,size=64m', mnt]);
        assert.equal(r.code, 0, r.stderr);
      });
    });
  });

  it('a daemon export on a full file system: hyper ls marks it unhealthy and says why, until a flush gets through', async (t) => {
    if (!needTools(t, 'nbdcopy', 'nbdsh', 'mount', 'umount')) return;
    if (!needPrerequisite(t, process.getuid?.() === 0, 'needs root (mounts a small tmpfs)')) return;
    const dir = await tempDir(t, 'hyper-full-daemon-');
    await withTmpfs(t, '4m', async (mnt) => {
      const url = fileUrl(join(mnt, 'v'));
      const c = await hyper(['file', 'create', url, '--size', '64M']);
      assert.equal(c.code, 0, show(c));
      const d = await startDaemon(['--port', '0', '--state-file', join(dir, 'state.json')], {
        controlSocket: join(dir, 'control.sock'),
      });
      try {
        const m = await d.ctl(['map', url, '--name', 'vm', '--json']);
        assert.equal(m.code, 0, show(m));
        const uri = (JSON.parse(m.stdout) as { uri: string }).uri;
        const img = join(dir, 'data.img');
        await writeFile(img, randomBytes(16 * MiB));
        const copy = await run('nbdcopy', ['--flush', img, uri], { timeoutMs: 120_000 });
        assert.notEqual(copy.code, 0, 'the write to a full file system fails');

        const sick = lsSchema.parse(JSON.parse((await d.ctl(['ls', '--json'])).stdout));
        const why = sick.exports[0]?.health ?? '';
        assert.match(why, /^flushes failing for \d+ s \(\d+ failed; writes are held, not lost\): /);
        assert.match(why, /No space left/);
        assert.ok((sick.exports[0]?.dirtyBytes ?? 0) > 0, 'what is held counts as dirty');
        const table = await d.ctl(['ls', '--format', 'plain']);
        assert.match(table.stdout, /mapped \(unhealthy\)/, table.stdout);
        assert.match(table.stdout, /^vm: flushes failing/m, table.stdout);

        const r = await run('mount', ['-o', 'remount,size=64m', mnt]);
        assert.equal(r.code, 0, r.stderr);
        const flush = await run('nbdsh', ['-u', uri, '-c', 'h.flush()'], {
          timeoutMs: 120_000,
          env: nbdEnv,
        });
        assert.equal(flush.code, 0, flush.stderr);
        const well = lsSchema.parse(JSON.parse((await d.ctl(['ls', '--json'])).stdout));
        assert.equal(well.exports[0]?.health, null);
        assert.equal(well.exports[0]?.dirtyBytes, 0);
        assert.doesNotMatch((await d.ctl(['ls', '--format', 'plain'])).stdout, /unhealthy/);
      } catch (e) {
        await d.stop();
        throw e;
      }
      assert.equal(await d.stop(), 0, d.stderr());
    });
  });

  it('a file system without a free byte: deleting a volume still makes room, and a failed write leaves nothing behind', async (t) => {
    if (!needTools(t, 'mount', 'umount')) return;
    if (!needPrerequisite(t, process.getuid?.() === 0, 'needs root (mounts a small tmpfs)')) return;
    const dir = await tempDir(t, 'hyper-full-delete-');
    await withTmpfs(t, '8m', async (mnt) => {
      const keep = fileUrl(join(mnt, 'keep'));
      const gone = fileUrl(join(mnt, 'gone'));
      const data = randomBytes(2 * MiB);
      const img = join(dir, 'in.img');
      await writeFile(img, data);
      for (const url of [keep, gone]) {
        assert.equal((await hyper(['file', 'create', url, '--size', '4M'])).code, 0);
        const r = await hyper(['file', 'import', img, url]);
        assert.equal(r.code, 0, show(r));
      }
      const { stdout } = await run('df', ['-B1', '--output=avail', mnt]);
      const avail = Number(stdout.trim().split('\n').at(-1));
      await writeFile(join(mnt, 'filler'), Buffer.alloc(avail));
      const files = async (): Promise<string[]> =>
        (await run('find', [mnt, '-type', 'f'])).stdout.trim().split('\n').sort();
      const before = await files();

      const write = await hyper(['file', 'import', img, keep]);
      assert.equal(write.code, 5, show(write));
      assert.match(write.stderr, /NO_SPACE/);
      assert.deepEqual(await files(), before, 'a refused write leaves no file behind');

      const del = await hyper(['file', 'delete', gone, '--yes']);
      assert.equal(del.code, 0, show(del));
      const after = await run('df', ['-B1', '--output=avail', mnt]);
      assert.ok(Number(after.stdout.trim().split('\n').at(-1)) >= 2 * MiB, after.stdout);
      assert.deepEqual(
        await files(),
        before.filter((f) => !f.startsWith(join(mnt, 'gone'))),
      );
      const exp = await hyper(['file', 'export', keep, join(dir, 'out.img')]);
      assert.equal(exp.code, 0, show(exp));
      assert.equal(sha((await readFile(join(dir, 'out.img'))).subarray(0, data.length)), sha(data));

      // Read-only: said so (not "permission denied"), and reading still works.
      const ro = await run('mount', ['-o', 'remount,ro', mnt]);
      assert.equal(ro.code, 0, ro.stderr);
      try {
        const refused = await hyper(['file', 'import', img, keep]);
        assert.equal(refused.code, 5, show(refused));
        assert.match(refused.stderr, /ACCESS_DENIED.*is on a read-only file system/);
        assert.match(refused.stderr, /Remount it read-write/);
        const stat = await hyper(['file', 'stat', keep]);
        assert.equal(stat.code, 0, show(stat));
      } finally {
        await run('mount', ['-o', 'remount,rw', mnt]);
      }
    });
  });

  it('compaction on a nearly full file system: drops and deletes first, then moves blocks', async (t) => {
    if (!needTools(t, 'mount', 'umount')) return;
    if (!needPrerequisite(t, process.getuid?.() === 0, 'needs root (mounts a small tmpfs)')) return;
    const dir = await tempDir(t, 'hyper-full-compact-');
    await withTmpfs(t, '16m', async (mnt) => {
      const url = fileUrl(join(mnt, 'v'));
      const c = await hyper(['file', 'create', url, '--size', '8M']);
      assert.equal(c.code, 0, show(c));
      // 4 MiB, then three overwrites of its first half: the first segment is half live, the
      // next two are dead once only the newest checkpoint is kept.
      const base = randomBytes(4 * MiB);
      const want = Buffer.from(base);
      for (const [i, data] of [base, ...[1, 2, 3].map(() => randomBytes(2 * MiB))].entries()) {
        const img = join(dir, `in${i}.img`);
        await writeFile(img, data);
        const r = await hyper(['file', 'import', img, url]);
        assert.equal(r.code, 0, show(r));
        data.copy(want);
      }
      // Leave 200 KiB: room for heads and records, not for a segment of moved blocks.
      const { stdout } = await run('df', ['-B1', '--output=avail', mnt]);
      const avail = Number(stdout.trim().split('\n').at(-1));
      await writeFile(join(mnt, 'filler'), Buffer.alloc(avail - 200 * 1024));

      const policy = ['--keep-last', '1', '--yes'];
      // With the default grace period nothing can be deleted yet, so nothing is moved either.
      const held = await hyperJson(['compact', url, ...policy]);
      assert.equal(held.rewriteSkipped, true, JSON.stringify(held));
      assert.equal(held.rewrittenSegmentCount, 0);
      assert.ok((held.droppedCheckpointCount as number) > 0);
      assert.ok((held.deferredSegmentCount as number) > 0);

      const r = await hyperJson(['compact', url, ...policy, '--grace', '0s']);
      const said = JSON.stringify(r);
      assert.equal(r.rewriteSkipped, false, said);
      assert.ok((r.reclaimedBytes as number) > 0, said);
      assert.ok((r.rewrittenSegmentCount as number) >= 1, said);
      assert.ok((r.storedBytesAfter as number) <= 1.15 * (r.liveBytes as number), said);
      const check = await hyper(['file', 'check', url, '--deep']);
      assert.equal(check.code, 0, show(check));
      const out = join(dir, 'out.img');
      const exp = await hyper(['file', 'export', url, out]);
      assert.equal(exp.code, 0, show(exp));
      assert.equal(sha((await readFile(out)).subarray(0, want.length)), sha(want));
    });
  });
});
