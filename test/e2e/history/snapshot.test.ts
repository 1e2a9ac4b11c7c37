/**
 * `hyper snapshot create/list/restore/delete/diff` through the real CLI on file:// volumes:
 * exit codes, --json shapes, restore by name, number, ISO time and relative time, undo, dry
 * runs that change nothing, refusal while another writer holds the lease.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, hyper, hyperJson, show, tempDir } from '../../helpers/cli.js';
import type { SnapshotCreateResult } from '../../../src/commands/snapshot/create.js';
import type { SnapshotDeleteResult } from '../../../src/commands/snapshot/delete.js';
import type { SnapshotDiffResult } from '../../../src/commands/snapshot/diff.js';
import type { SnapshotListResult } from '../../../src/commands/snapshot/list.js';
import type { SnapshotRestoreResult } from '../../../src/commands/snapshot/restore.js';
import {
  exportSha,
  objectsOnDisk,
  randomBuffer,
  rng,
  sha256,
} from '../../helpers/volume-content.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;

interface ErrorOut {
  error: { kind: string; code: string; message: string; exitCode: number };
}
interface ImportOut {
  checkpoint: number;
  checkpointTime: string;
}

describe('hyper snapshot', () => {
  it('creates, lists, restores (by name, number, ISO and relative time), undoes and deletes', async (t) => {
    const dir = await tempDir(t, 'hyper-hist-');
    const url = fileUrl(join(dir, 'vol'));
    const rand = rng(7);
    const a = randomBuffer(rand, SIZE);
    const b = randomBuffer(rand, SIZE);
    await writeFile(join(dir, 'a.img'), a);
    await writeFile(join(dir, 'b.img'), b);
    const out = join(dir, 'out.img');

    const ia = await hyperJson<ImportOut>(['file', 'import', join(dir, 'a.img'), url, '--create']);
    const cpA = ia.checkpoint;

    // create: pins the current checkpoint in a handful of requests (reading the head twice,
    // each time with the LIST of the segments past it: FORMAT.md "Commit protocol").
    const snapA = await hyperJson<SnapshotCreateResult>(['snapshot', 'create', url, '--name', 'a']);
    assert.equal(snapA.name, 'a');
    assert.equal(snapA.checkpoint, cpA);
    assert.equal(snapA.url, url);
    assert.ok(!Number.isNaN(Date.parse(snapA.createdAt)));
    assert.ok(
      snapA.requests.totalCount > 0 && snapA.requests.totalCount <= 5,
      `requests: ${snapA.requests.totalCount}`,
    );
    // A second snapshot of the same checkpoint, made by number.
    const snapA2 = await hyperJson<SnapshotCreateResult>([
      'snapshot',
      'create',
      url,
      '--name',
      'a-too',
      '--at',
      String(cpA),
    ]);
    assert.equal(snapA2.checkpoint, cpA);
    assert.deepEqual(snapA2.at, { checkpoint: cpA });

    // Same name again: conflict (4); a bad name: usage error (2); a missing checkpoint: 3.
    const dup = await hyperJson<ErrorOut>(['snapshot', 'create', url, '--name', 'a'], 4);
    assert.equal(dup.error.code, 'SNAPSHOT_EXISTS');
    const badName = await hyper(['snapshot', 'create', url, '--name', 'no spaces!']);
    assert.equal(badName.code, 2, show(badName));
    assert.match(badName.stderr, /Invalid snapshot name/);
    const noCp = await hyperJson<ErrorOut>(
      ['snapshot', 'create', url, '--name', 'x', '--at', '999'],
      3,
    );
    assert.equal(noCp.error.code, 'CHECKPOINT_NOT_FOUND');

    await sleep(1000);
    const ib = await hyperJson<ImportOut>(['file', 'import', join(dir, 'b.img'), url]);
    const cpB = ib.checkpoint;
    assert.ok(cpB > cpA);
    assert.equal(await exportSha(url, out), sha256(b));

    // list: newest first, names, current marker.
    const list = await hyperJson<SnapshotListResult>(['snapshot', 'list', url]);
    assert.equal(list.url, url);
    const ids = list.checkpoints.map((c) => c.checkpoint);
    assert.deepEqual(
      ids,
      [...ids].sort((x, y) => y - x),
    );
    assert.equal(ids[0], cpB);
    assert.equal(list.checkpoints[0]?.current, true);
    assert.equal(list.checkpoints.filter((c) => c.current).length, 1);
    const entryA = list.checkpoints.find((c) => c.checkpoint === cpA);
    assert.deepEqual(entryA?.names.sort(), ['a', 'a-too']);
    assert.ok(
      (entryA?.writtenBytes ?? 0) >= SIZE,
      `checkpoint A wrote the image: ${entryA?.writtenBytes}`,
    );
    assert.equal(list.checkpoints[0]?.time, ib.checkpointTime);
    const named = await hyperJson<SnapshotListResult>(['snapshot', 'list', url, '--named']);
    assert.deepEqual(
      named.checkpoints.map((c) => c.checkpoint),
      [cpA],
    );
    const limited = await hyperJson<SnapshotListResult>(['snapshot', 'list', url, '--limit', '1']);
    assert.deepEqual(
      limited.checkpoints.map((c) => c.checkpoint),
      [cpB],
    );
    const justAfterA = new Date(Date.parse(ia.checkpointTime) + 1).toISOString();
    const since = await hyperJson<SnapshotListResult>([
      'snapshot',
      'list',
      url,
      '--since',
      justAfterA,
    ]);
    assert.deepEqual(
      since.checkpoints.map((c) => c.checkpoint),
      [cpB],
    );
    const human = await hyper(['snapshot', 'list', url]);
    assert.equal(human.code, 0, show(human));
    assert.match(human.stdout, /Checkpoint.*Time.*Name.*Written/);
    assert.match(human.stdout, new RegExp(`${cpA}\\s.*a, a-too`));
    assert.match(human.stdout, /current/);

    // Restore by relative time: "d ago", with d chosen so that it lands just after A (and well
    // before B, however slowly the command starts: A and B are seconds apart).
    const ago = Date.now() - Date.parse(ia.checkpointTime) - 300;
    const r0 = await hyperJson<SnapshotRestoreResult>([
      'snapshot',
      'restore',
      url,
      '--to',
      `${ago}ms`,
    ]);
    assert.ok('time' in r0.to && Date.parse(r0.to.time) < Date.parse(ib.checkpointTime));
    assert.equal(r0.targetCheckpoint, cpA);
    assert.equal(r0.previousCheckpoint, cpB);
    assert.equal(r0.dryRun, false);
    assert.ok(r0.checkpoint !== null && r0.checkpoint > cpB);
    assert.ok(
      r0.requests.totalCount > 0 && r0.requests.totalCount <= 20,
      `restore requests: ${r0.requests.totalCount}`,
    );
    assert.equal(await exportSha(url, out), sha256(a));

    // Undo: restore to the checkpoint the restore started from (by number).
    const undo = await hyper(['snapshot', 'restore', url, '--to', String(r0.previousCheckpoint)]);
    assert.equal(undo.code, 0, show(undo));
    assert.match(undo.stdout, new RegExp(`Restored .* to checkpoint ${cpB} `));
    assert.match(undo.stdout, /To undo: hyper snapshot restore .* --to \d+/);
    assert.equal(await exportSha(url, out), sha256(b));

    // Restore by name; the new checkpoint has A's content; the list marks it.
    const r1 = await hyperJson<SnapshotRestoreResult>(['snapshot', 'restore', url, '--to', 'a']);
    assert.deepEqual(r1.to, { snapshot: 'a' });
    assert.equal(r1.targetCheckpoint, cpA);
    assert.ok(r1.checkpoint !== null && r1.previousCheckpoint < r1.checkpoint);
    assert.equal(await exportSha(url, out), sha256(a));
    const after = await hyperJson<SnapshotListResult>(['snapshot', 'list', url, '--limit', '1']);
    assert.equal(after.checkpoints[0]?.checkpoint, r1.checkpoint);
    assert.equal(after.checkpoints[0]?.restoredFrom, cpA);
    assert.equal(after.checkpoints[0]?.current, true);

    // Restore by ISO time: B's exact time (explicit time: prefix) lands on B, A's on A.
    const r3 = await hyperJson<SnapshotRestoreResult>([
      'snapshot',
      'restore',
      url,
      '--to',
      `time:${ib.checkpointTime}`,
    ]);
    assert.equal(r3.targetCheckpoint, cpB);
    assert.deepEqual(r3.to, { time: ib.checkpointTime });
    assert.equal(await exportSha(url, out), sha256(b));
    const r4 = await hyperJson<SnapshotRestoreResult>([
      'snapshot',
      'restore',
      url,
      '--to',
      ia.checkpointTime,
    ]);
    assert.equal(r4.targetCheckpoint, cpA);
    assert.equal(await exportSha(url, out), sha256(a));

    // delete: unpins; the checkpoint stays restorable by number; a second delete is exit 3.
    const del = await hyperJson<SnapshotDeleteResult>(['snapshot', 'delete', url, 'a']);
    assert.deepEqual(
      { name: del.name, checkpoint: del.checkpoint },
      { name: 'a', checkpoint: cpA },
    );
    const again = await hyperJson<ErrorOut>(['snapshot', 'delete', url, 'a'], 3);
    assert.equal(again.error.code, 'SNAPSHOT_NOT_FOUND');
    const gone = await hyperJson<ErrorOut>(['snapshot', 'restore', url, '--to', 'a'], 3);
    assert.equal(gone.error.code, 'SNAPSHOT_NOT_FOUND');
    const names = await hyperJson<SnapshotListResult>(['snapshot', 'list', url, '--named']);
    assert.deepEqual(
      names.checkpoints.flatMap((c) => c.names),
      ['a-too'],
    );
    assert.equal(await exportSha(url, out, ['--at', String(cpA)]), sha256(a));
  });

  it('a dry-run restore changes nothing; bad references are usage errors', async (t) => {
    const dir = await tempDir(t, 'hyper-hist-');
    const volDir = join(dir, 'vol');
    const url = fileUrl(volDir);
    const rand = rng(11);
    await writeFile(join(dir, 'a.img'), randomBuffer(rand, SIZE));
    await writeFile(join(dir, 'b.img'), randomBuffer(rand, SIZE));
    const ia = await hyperJson<ImportOut>(['file', 'import', join(dir, 'a.img'), url, '--create']);
    await hyperJson(['file', 'import', join(dir, 'b.img'), url]);
    await hyperJson(['snapshot', 'create', url, '--name', 'keep', '--at', String(ia.checkpoint)]);

    const before = await objectsOnDisk(volDir);
    const headBefore = await readFile(join(volDir, 'head'));
    for (const to of ['keep', String(ia.checkpoint), '1h', 'snapshot:keep']) {
      const r = await hyper(['snapshot', 'restore', url, '--to', to, '--dry-run']);
      if (to === '1h') {
        // An hour ago there was no checkpoint yet.
        assert.equal(r.code, 3, show(r));
        assert.match(r.stderr, /CHECKPOINT_NOT_FOUND/);
        continue;
      }
      assert.equal(r.code, 0, show(r));
      assert.match(r.stdout, /^Dry run: would restore .* to checkpoint \d+ .*Nothing changed\.$/m);
    }
    assert.deepEqual(await objectsOnDisk(volDir), before);
    assert.deepEqual(await readFile(join(volDir, 'head')), headBefore);

    // Bad references: exit 2, naming the flag and the accepted forms.
    for (const [flag, value] of [
      ['--to', 'not a name'],
      ['--to', 'checkpoint:x'],
      ['--to', '0'],
      ['--to', '2026-02-31'],
      ['--to', 'time:yesterday'],
    ] as const) {
      const r = await hyper(['snapshot', 'restore', url, flag, value]);
      assert.equal(r.code, 2, `${value}: ${show(r)}`);
      assert.match(r.stderr, new RegExp(`Invalid value .*${flag === '--to' ? ' for --to' : ''}`));
    }
    const missing = await hyper(['snapshot', 'restore', url]);
    assert.equal(missing.code, 2, show(missing));
    assert.match(missing.stderr, /--to/);
    const j = await hyperJson<ErrorOut>(['snapshot', 'diff', url, '--from', 'bad name'], 2);
    assert.equal(j.error.code, 'INVALID_ARGUMENT');
    assert.match(j.error.message, /for --from/);
    // compact: a policy that keeps everything drops nothing; dropping history needs --yes
    // without a terminal; a bad --min-live is a usage error. None of it changes the volume.
    const keepAll = await hyperJson<{ droppedCheckpointCount: number; dryRun: boolean }>([
      'compact',
      url,
      '--keep-within',
      '1h',
      '--dry-run',
    ]);
    assert.deepEqual(keepAll, { ...keepAll, droppedCheckpointCount: 0, dryRun: true });
    const noYes = await hyper(['compact', url, '--keep-last', '1']);
    assert.equal(noYes.code, 2, show(noYes));
    assert.match(noYes.stderr, /without confirmation.*\n.*--yes/);
    const badLive = await hyper(['compact', url, '--min-live', '2', '--dry-run']);
    assert.equal(badLive.code, 2, show(badLive));
    assert.match(badLive.stderr, /--min-live/);
    // A missing volume: exit 3.
    const nov = await hyper(['snapshot', 'list', fileUrl(join(dir, 'nothing'))]);
    assert.equal(nov.code, 3, show(nov));
    assert.deepEqual(await objectsOnDisk(volDir), before);
  });

  it('diff shows exactly the changed extents, data and zero', async (t) => {
    const dir = await tempDir(t, 'hyper-hist-');
    const url = fileUrl(join(dir, 'vol'));
    const rand = rng(3);
    await writeFile(join(dir, 'a.img'), randomBuffer(rand, SIZE));
    const ia = await hyperJson<ImportOut>(['file', 'import', join(dir, 'a.img'), url, '--create']);
    await hyperJson(['snapshot', 'create', url, '--name', 'base']);

    // Change two places through the library: new data at 1 MiB, zeros at 3 MiB.
    const store = await openStore(url);
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(1 * MiB, randomBuffer(rand, 64 * KiB));
    await v.write(2 * MiB + 4 * KiB, randomBuffer(rand, 8 * KiB));
    await v.writeZeroes(3 * MiB, 128 * KiB);
    const { checkpoint: cpB } = await v.flush();
    await v.close();
    await store.close();

    const d = await hyperJson<SnapshotDiffResult>(['snapshot', 'diff', url, '--from', 'base']);
    assert.equal(d.fromCheckpoint, ia.checkpoint);
    assert.equal(d.toCheckpoint, cpB);
    assert.deepEqual(d.from, { snapshot: 'base' });
    assert.deepEqual(d.extents, [
      { offset: 1 * MiB, length: 64 * KiB, zero: false },
      { offset: 2 * MiB + 4 * KiB, length: 8 * KiB, zero: false },
      { offset: 3 * MiB, length: 128 * KiB, zero: true },
    ]);
    assert.equal(d.changedBytes, 200 * KiB);

    // Reversed: the same ranges, now all data (A had data everywhere).
    const back = await hyperJson<SnapshotDiffResult>([
      'snapshot',
      'diff',
      url,
      '--from',
      String(cpB),
      '--to',
      'base',
    ]);
    assert.deepEqual(
      back.extents.map((e) => [e.offset, e.length, e.zero]),
      [
        [1 * MiB, 64 * KiB, false],
        [2 * MiB + 4 * KiB, 8 * KiB, false],
        [3 * MiB, 128 * KiB, false],
      ],
    );
    const none = await hyperJson<SnapshotDiffResult>([
      'snapshot',
      'diff',
      url,
      '--from',
      String(cpB),
    ]);
    assert.deepEqual(none.extents, []);

    const human = await hyper(['snapshot', 'diff', url, '--from', 'base']);
    assert.equal(human.code, 0, show(human));
    assert.match(human.stdout, /Offset.*Length.*Type/);
    assert.match(human.stdout, /3145728\s*│\s*128 KiB\s*│\s*zero/);
    assert.match(human.stdout, /3 changed extents, 200 KiB/);
  });

  it('restore refuses while another writer holds the lease (exit 4, naming it); --force takes over', async (t) => {
    const dir = await tempDir(t, 'hyper-hist-');
    const volDir = join(dir, 'vol');
    const url = fileUrl(volDir);
    const rand = rng(5);
    const a = randomBuffer(rand, SIZE);
    await writeFile(join(dir, 'a.img'), a);
    const ia = await hyperJson<ImportOut>(['file', 'import', join(dir, 'a.img'), url, '--create']);

    const store = await openStore(url);
    const writer = await Volume.open(store, { holder: 'test-writer-42', flushIntervalMs: 0 });
    t.after(async () => {
      await writer.close().catch(() => undefined);
      await store.close();
    });
    await writer.write(0, Buffer.alloc(64 * KiB, 7));
    await writer.flush();

    const headBefore = await readFile(join(volDir, 'head'));
    const r = await hyper(['snapshot', 'restore', url, '--to', String(ia.checkpoint)]);
    assert.equal(r.code, 4, show(r));
    assert.match(r.stderr, /^Error \[LEASE_HELD\]: .*test-writer-42/m);
    assert.match(r.stderr, /--force/);
    assert.deepEqual(await readFile(join(volDir, 'head')), headBefore, 'nothing committed');
    // Snapshot create does not need the lease.
    await hyperJson(['snapshot', 'create', url, '--name', 'while-served']);

    const forced = await hyperJson<SnapshotRestoreResult>([
      'snapshot',
      'restore',
      url,
      '--to',
      String(ia.checkpoint),
      '--force',
    ]);
    assert.equal(forced.targetCheckpoint, ia.checkpoint);
    assert.equal(await exportSha(url, join(dir, 'out.img')), sha256(a));
    // The fenced writer can commit nothing more. Its lease renewal may already have noticed
    // the takeover (then the write itself is refused), or the flush finds out.
    await assert.rejects(async () => {
      await writer.write(0, Buffer.alloc(4 * KiB, 9));
      await writer.flush();
    }, /FENCED|taken over|took over/);
    assert.equal(await exportSha(url, join(dir, 'out.img')), sha256(a));
  });
});
