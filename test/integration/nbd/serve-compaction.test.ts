/**
 * `hyper serve --compact-every`: the server compacts the volume it writes, online, while a
 * real client (fio, crc32c-verified random writes) keeps writing. On file:// and on RGW:
 *   - the runs happen beside the writes (logged `compacted`, blocks moved, space reclaimed),
 *     and nothing is refused or fenced;
 *   - fio's own verification of every block it wrote passes, during the run and after a
 *     restart (a fresh server, read-only, verify only);
 *   - the store ends near the volume's live size, and `file check --deep` finds it clean.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { join } from 'node:path';
import { fileUrl, hyper, hyperJson, show, tempDir } from '../../helpers/cli.js';
import { needS3, needTools } from '../../helpers/env.js';
import { run, type RunResult } from '../../helpers/nbd.js';
import { ensureBucket, uniqueS3Url } from '../../helpers/s3.js';
import { rng } from '../../helpers/rng.js';
import { serve, stopServe, volumeToServe } from '../../helpers/serve.js';

const MiB = 1024 * 1024;

const fio = (uri: string, extra: string[]): Promise<RunResult> =>
  run(
    'fio',
    [
      '--name=online',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--size=16M',
      '--verify=crc32c',
      '--verify_fatal=1',
      '--randrepeat=1',
      // A FLUSH every 64 writes: a checkpoint each, most of them soon outside the policy.
      '--fsync=64',
      ...extra,
    ],
    { timeoutMs: 300_000 },
  );

/** The value of a Prometheus sample line `name value` (`name` a regular expression), or 0. */
const metric = (text: string, name: string): number =>
  Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);

/** Compact every second, keeping the last checkpoint only, no grace; metrics on. */
const COMPACT_OFTEN = [
  '--compact-every',
  '1s',
  '--compact-keep-last',
  '1',
  '--compact-grace',
  '0s',
  '--metrics-port',
  '0',
];

/**
 * `rounds` loops of writes: on RGW each takes ~10 s here (64 checkpoints a round), so fewer
 * rounds there still see many compaction periods.
 */
async function onlineCompaction(
  t: TestContext,
  url: string,
  store: string[],
  rounds: number,
): Promise<void> {
  const c = await hyper(['file', 'create', url, '--size', '64M', ...store]);
  assert.equal(c.code, 0, show(c));
  const s = await serve([url, ...store, ...COMPACT_OFTEN]);
  let stderr = '';
  try {
    // `hyper compact` beside the server is refused, and says how the server does it instead.
    const refused = await hyperJson<{ error: { code: string; suggestion: string } }>(
      ['compact', url, '--keep-last', '1', '--yes', ...store],
      4,
    );
    assert.equal(refused.error.code, 'LEASE_HELD');
    assert.match(refused.error.suggestion, /--compact-every/);
    // Overwrite the same 16 MiB again and again (loops of writes, each verified in the
    // background a moment after it was written), for several compaction periods.
    for (let round = 0; round < rounds; round++) {
      const w = await fio(s.uri, ['--verify_backlog=256', `--randseed=${round + 1}`]);
      assert.equal(w.code, 0, w.stdout + w.stderr);
    }
    // The last round's blocks, verified by a final pass.
    const v = await fio(s.uri, [`--randseed=${rounds}`, '--verify_only=1']);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    // Give the next run a moment to find the writes done.
    await new Promise((r) => setTimeout(r, 2500));
    // What the runs did, as Prometheus sees it.
    const text = await (await fetch(s.metrics as string)).text();
    const value = (name: string): number => metric(text, name);
    assert.ok(value('hyper_volume_compactions_total\\{export="[^"]*",result="ok"\\}') >= 3, text);
    assert.equal(value('hyper_volume_compactions_total\\{export="[^"]*",result="failed"\\}'), 0);
    assert.ok(value('hyper_volume_compaction_reclaimed_bytes_total\\{export="[^"]*"\\}') > 0, text);
    assert.ok(value('hyper_volume_compaction_moved_bytes_total\\{export="[^"]*"\\}') > 0, text);
  } finally {
    assert.equal(await stopServe(s), 0, s.stderr());
    stderr = s.stderr();
  }
  const runs = stderr.split('\n').filter((l) => / info compacted /.test(l));
  assert.ok(runs.length >= 3, stderr);
  assert.ok(
    runs.some((l) => /"rewrittenBytes":[1-9]/.test(l)) &&
      runs.some((l) => /"reclaimedBytes":[1-9]/.test(l)),
    runs.join('\n'),
  );
  assert.doesNotMatch(stderr, /compaction failed|FENCED|lease lost/);

  // After a restart: every block as fio last wrote it; a clean volume near its live size.
  const r = await serve([url, ...store, '--read-only']);
  try {
    const v = await fio(r.uri, [`--randseed=${rounds}`, '--verify_only=1']);
    assert.equal(v.code, 0, v.stdout + v.stderr);
  } finally {
    await stopServe(r);
  }
  const check = await hyper(['file', 'check', url, '--deep', ...store]);
  assert.equal(check.code, 0, show(check));
  const st = await hyperJson<{ storedBytes: number }>(['file', 'stat', url, ...store]);
  // 16 MiB written, `rounds` times over (4 or 8): without compaction 64 MiB or more would be
  // stored.
  assert.ok(st.storedBytes < 40 * MiB, `${st.storedBytes} bytes stored`);
  void t;
}

describe('serve --compact-every', () => {
  it('compacts a file:// volume online under verified random writes', async (t) => {
    if (!needTools(t, 'fio')) return;
    const dir = await tempDir(t, 'hyper-online-compact-');
    await onlineCompaction(t, fileUrl(join(dir, 'v')), [], 8);
  });

  it('compacts an RGW volume online under verified random writes', async (t) => {
    if (!needTools(t, 'fio')) return;
    const cfg = needS3(t);
    if (!cfg) return;
    await ensureBucket(cfg);
    await onlineCompaction(t, uniqueS3Url(cfg, 'online-compact'), ['--endpoint', cfg.endpoint], 4);
  });

  it('hands `hyper compact` and `hyper snapshot create` to a `serve --control-socket` beside fio', async (t) => {
    const { dir, url, wal, sock } = await volumeToServe(t);
    // fio's verification of round `seed` against the snapshot, served read-only.
    const snapshotHoldsRound = async (seed: number): Promise<void> => {
      const at = await serve([url, '--at', 'after-3', '--read-only']);
      try {
        const v = await fio(at.uri, [`--randseed=${seed}`, '--verify_only=1']);
        assert.equal(v.code, 0, v.stdout + v.stderr);
      } finally {
        await stopServe(at);
      }
    };
    // With a WAL, a client's FLUSH commits no checkpoint: only the server knows the writes.
    const s = await serve([url, '--wal-url', wal, '--control-socket', sock]);
    try {
      for (let round = 1; round <= 3; round++) {
        const w = await fio(s.uri, [`--randseed=${round}`]);
        assert.equal(w.code, 0, w.stdout + w.stderr);
      }
      // The snapshot holds every write fio had acknowledged: the server committed them first.
      const snap = await hyperJson<{
        checkpoint: number;
        flushedBy: { controlSocket: string; export: string; checkpoint: number } | null;
      }>(['snapshot', 'create', url, 'after-3', '--control-socket', sock]);
      assert.deepEqual(
        { socket: snap.flushedBy?.controlSocket, export: snap.flushedBy?.export },
        { socket: sock, export: 'vol' },
      );
      await snapshotHoldsRound(3);
      // Compaction by the server, online, while fio writes on.
      const writing = fio(s.uri, ['--randseed=4']);
      const compacted = await hyperJson<{
        online: { controlSocket: string; export: string } | null;
        droppedCheckpointCount: number;
      }>(['compact', url, '--keep-last', '1', '--grace', '0s', '--yes', '--control-socket', sock]);
      assert.deepEqual(compacted.online, { controlSocket: sock, export: 'vol' });
      assert.ok(compacted.droppedCheckpointCount >= 1, JSON.stringify(compacted));
      const w = await writing;
      assert.equal(w.code, 0, w.stdout + w.stderr);
      const v = await fio(s.uri, ['--randseed=4', '--verify_only=1']);
      assert.equal(v.code, 0, v.stdout + v.stderr);
      // Without the socket it is refused as before, and told where to ask.
      const refused = await hyperJson<{ error: { code: string; suggestion: string } }>(
        ['compact', url, '--yes', '--control-socket', join(dir, 'none.sock')],
        4,
      );
      assert.equal(refused.error.code, 'LEASE_HELD');
      assert.match(refused.error.suggestion, /serve --control-socket/);
    } finally {
      assert.equal(await stopServe(s), 0, s.stderr());
    }
    assert.match(s.stderr(), /compacting on request/);
    const check = await hyper(['file', 'check', url, '--deep']);
    assert.equal(check.code, 0, show(check));
    // The snapshot survived the compaction whole.
    await snapshotHoldsRound(3);
  });

  it('compacts a deduplicating volume online while qemu-io writes repeating contents', async (t) => {
    if (!needTools(t, 'qemu-io')) return;
    const dir = await tempDir(t, 'hyper-online-dedup-');
    const url = fileUrl(join(dir, 'v'));
    const c = await hyper(['file', 'create', url, '--size', '64M', '--dedup']);
    assert.equal(c.code, 0, show(c));
    const s = await serve([url, ...COMPACT_OFTEN]);
    // 4 MiB in 64 KiB chunks, each written with one byte pattern, mostly from a window that
    // slides round by round: contents repeat (new writes point at stored blocks), new ones
    // keep coming, and old ones are overwritten everywhere (their blocks become garbage that
    // only the content index names, until compaction lets them go).
    const chunk = 64 * 1024;
    const model: number[] = new Array<number>(64).fill(0);
    const r = rng(7);
    const qemuIo = async (cmds: string[], uri: string, readOnly = false): Promise<void> => {
      const args = [...(readOnly ? ['-r'] : []), '-f', 'raw', ...cmds.flatMap((c) => ['-c', c])];
      const q = await run('qemu-io', [...args, uri], {
        timeoutMs: 120_000,
      });
      assert.equal(q.code, 0, q.stderr + q.stdout);
      assert.doesNotMatch(q.stdout + q.stderr, /verification failed|error/i);
    };
    const verifyAll = (uri: string, readOnly = false): Promise<void> =>
      qemuIo(
        model.map((p, i) => `read -P 0x${p.toString(16)} ${i * chunk} 64k`),
        uri,
        readOnly,
      );
    let stderr = '';
    try {
      for (let round = 0; round < 16; round++) {
        const cmds: string[] = [];
        for (let k = 0; k < 160; k++) {
          const i = Math.floor(r() * model.length);
          // (Now and then an old one comes back: its blocks may be garbage by then.)
          const p =
            1 +
            ((r() < 0.7 ? round * 2 + Math.floor(r() * 5) : Math.floor(r() * (round * 2 + 5))) %
              255);
          model[i] = p;
          cmds.push(`write -P 0x${p.toString(16)} ${i * chunk} 64k`);
        }
        await qemuIo([...cmds, 'flush'], s.uri);
        // Everything read back right away, beside the runs.
        await verifyAll(s.uri);
        await new Promise((res) => setTimeout(res, 300));
      }
      await verifyAll(s.uri);
      await new Promise((res) => setTimeout(res, 2500));
      const text = await (await fetch(s.metrics as string)).text();
      const value = (name: string): number => metric(text, name);
      assert.ok(value('hyper_volume_compactions_total\\{export="[^"]*",result="ok"\\}') >= 3, text);
      assert.equal(value('hyper_volume_compactions_total\\{export="[^"]*",result="failed"\\}'), 0);
      assert.ok(
        value('hyper_volume_compaction_reclaimed_bytes_total\\{export="[^"]*"\\}') > 0,
        text,
      );
    } finally {
      assert.equal(await stopServe(s), 0, s.stderr());
      stderr = s.stderr();
    }
    assert.doesNotMatch(stderr, /compaction failed|FENCED|lease lost|not compacted/);
    // After a restart: every chunk as last written; a clean volume.
    const again = await serve([url, '--read-only']);
    try {
      await verifyAll(again.uri, true);
    } finally {
      await stopServe(again);
    }
    const check = await hyper(['file', 'check', url, '--deep']);
    assert.equal(check.code, 0, show(check));
  });
});
