/**
 * `hyper snapshot clone` and `hyper snapshot flatten` through the real CLI: a clone reads
 * the parent checkpoint's content, its writes stay its own, the parent's compaction keeps the
 * cloned checkpoint while the clone depends on it and drops it once the clone is flattened,
 * deleted, or (gone behind hyper's back) unpinned.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { CompactCommandResult } from '../../../src/commands/compact.js';
import type { FileCheckResult } from '../../../src/commands/file/check.js';
import type { FileStatResult } from '../../../src/commands/file/stat.js';
import type { FileDeleteResult } from '../../../src/commands/file/delete.js';
import type { SnapshotCloneResult } from '../../../src/commands/snapshot/clone.js';
import type { SnapshotFlattenResult } from '../../../src/commands/snapshot/flatten.js';
import type { SnapshotListResult } from '../../../src/commands/snapshot/list.js';
import type { SnapshotUnpinResult } from '../../../src/commands/snapshot/unpin.js';
import { decodeHead, encodeHead } from '../../../src/format/codec/head.js';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, hyper, hyperJson, show, tempDir } from '../../helpers/cli.js';
import {
  exportSha,
  objectsOnDisk,
  randomBuffer,
  rng,
  sha256,
  shaAt,
  sum,
} from '../../helpers/volume-content.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;

interface ErrorOut {
  error: { code: string; message: string };
}

/** `hyper file import` of an image file, creating the volume if asked. */
const importImage = (image: string, url: string, create = false): Promise<{ checkpoint: number }> =>
  hyperJson<{ checkpoint: number }>([
    'file',
    'import',
    image,
    url,
    ...(create ? ['--create'] : []),
  ]);

describe('hyper snapshot clone / flatten', () => {
  it('clones a checkpoint copy-on-write; compaction keeps it until the clone is flattened', async (t) => {
    const dir = await tempDir(t, 'hyper-clone-');
    const parent = fileUrl(join(dir, 'parent'));
    const child = fileUrl(join(dir, 'child'));
    const out = join(dir, 'out.img');
    // The parent's content, read through the library (the CLI export is tested on the clone).
    const parentSha = async (): Promise<string> => {
      const s = await openStore(parent);
      try {
        return await shaAt(s);
      } finally {
        await s.close();
      }
    };
    const rand = rng(17);
    const a = randomBuffer(rand, SIZE);
    const b = randomBuffer(rand, SIZE);
    await writeFile(join(dir, 'a.img'), a);
    await writeFile(join(dir, 'b.img'), b);
    const ia = await importImage(join(dir, 'a.img'), parent, true);
    await hyperJson(['snapshot', 'create', parent, '--name', 'gold']);
    await importImage(join(dir, 'b.img'), parent);

    const c = await hyperJson<SnapshotCloneResult>([
      'snapshot',
      'clone',
      parent,
      '--from',
      'gold',
      child,
    ]);
    assert.equal(c.checkpoint, ia.checkpoint);
    assert.deepEqual(c.from, { snapshot: 'gold' });
    assert.equal(c.clone.url, child);
    assert.equal(c.clone.size, SIZE);
    assert.equal(c.flattened, null);
    // Nothing is copied: the clone holds a head and an empty first segment.
    assert.ok(sum(await objectsOnDisk(join(dir, 'child'))) < 16 * KiB);
    assert.equal(await exportSha(child, out), sha256(a));

    // The clone's writes are its own.
    const patch = randomBuffer(rand, 64 * KiB);
    const store = await openStore(child);
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(MiB, patch);
    await v.flush();
    await v.close();
    await store.close();
    const expectedChild = Buffer.from(a);
    patch.copy(expectedChild, MiB);
    assert.equal(await exportSha(child, out), sha256(expectedChild));
    assert.equal(await parentSha(), sha256(b));

    // An existing volume is not overwritten.
    const exists = await hyperJson<ErrorOut>(['snapshot', 'clone', parent, child], 4);
    assert.equal(exists.error.code, 'VOLUME_EXISTS');

    // Unpin the snapshot: now only the clone keeps the parent's checkpoint.
    await hyperJson(['snapshot', 'delete', parent, 'gold']);
    const compact = ['compact', parent, '--keep-last', '1', '--grace', '0s', '--yes'];
    const r1 = await hyperJson<CompactCommandResult>(compact);
    assert.ok(r1.droppedCheckpointCount > 0);
    const l1 = await hyperJson<SnapshotListResult>(['snapshot', 'list', parent]);
    assert.ok(
      l1.checkpoints.some((x) => x.checkpoint === ia.checkpoint),
      `checkpoint ${ia.checkpoint} kept for the clone: ${JSON.stringify(l1.checkpoints)}`,
    );
    assert.equal(await exportSha(child, out), sha256(expectedChild));
    assert.equal(await parentSha(), sha256(b));

    // Flatten: the clone copies what it read from the parent and releases the pin.
    const headBefore = await readFile(join(dir, 'child', 'head'));
    const [pinFile] = await readdir(join(dir, 'parent', 'pin'));
    const pinBytes = await readFile(join(dir, 'parent', 'pin', pinFile as string));
    const f = await hyperJson<SnapshotFlattenResult>(['snapshot', 'flatten', child]);
    assert.equal(f.parent.url, parent);
    assert.equal(f.parent.checkpoint, ia.checkpoint);
    assert.equal(f.copiedBytes, SIZE - 64 * KiB);
    assert.equal(f.resumed, false);

    // As if that flatten had stopped right after its detach commit: its record of the head it
    // detached from and its pin are still there. Check names it, compaction and unpin wait,
    // and the flatten run again finishes it. (The record holds the head as the flatten held
    // it: under the flatten's epoch, which its detach commit carries too.)
    const detached = decodeHead(await readFile(join(dir, 'child', 'head'))).head;
    const recorded = { ...decodeHead(headBefore).head, epoch: detached.epoch };
    await writeFile(join(dir, 'child', 'flatten'), encodeHead(recorded));
    await mkdir(join(dir, 'parent', 'pin'), { recursive: true });
    await writeFile(join(dir, 'parent', 'pin', pinFile as string), pinBytes);
    const unfinished = await hyperJson<FileCheckResult>(['file', 'check', child]);
    assert.equal(unfinished.clean, true);
    assert.deepEqual(
      unfinished.problems.filter((p) => p.kind !== 'orphan').map((p) => [p.kind, p.key]),
      [['unfinished-flatten', 'flatten']],
    );
    assert.match(JSON.stringify(unfinished.problems), /snapshot flatten/);
    const st = await hyperJson<FileStatResult>(['file', 'stat', child]);
    assert.deepEqual(
      [st.parent, st.unfinishedFlatten],
      [null, { url: parent, checkpoint: ia.checkpoint }],
    );
    const stText = await hyper(['file', 'stat', child]);
    assert.match(stText.stdout, /Unfinished flatten/);
    const waits = await hyperJson<ErrorOut>(
      ['compact', child, '--keep-last', '1', '--grace', '0s', '--yes'],
      4,
    );
    assert.equal(waits.error.code, 'PRECONDITION_FAILED');
    const kept = await hyperJson<ErrorOut>(['snapshot', 'unpin', parent, child], 4);
    assert.equal(kept.error.code, 'HAS_CLONES');
    assert.match(kept.error.message, /flatten/);
    const resumed = await hyperJson<SnapshotFlattenResult>(['snapshot', 'flatten', child]);
    assert.deepEqual(
      [resumed.resumed, resumed.copiedBytes, resumed.parent],
      [true, 0, { url: parent, checkpoint: ia.checkpoint }],
    );
    const left = await readdir(join(dir, 'parent', 'pin')).catch(() => []);
    assert.deepEqual(left, []);
    assert.ok(!(await readdir(join(dir, 'child'))).includes('flatten'));
    const done = await hyperJson<FileStatResult>(['file', 'stat', child]);
    assert.equal(done.unfinishedFlatten, null);
    const again = await hyper(['snapshot', 'flatten', child]);
    assert.equal(again.code, 2, show(again));
    assert.match(again.stderr, /is not a clone/);

    const r2 = await hyperJson<CompactCommandResult>(compact);
    assert.ok(r2.deletedSegmentCount > 0 && r2.reclaimedBytes >= SIZE, JSON.stringify(r2));
    const l2 = await hyperJson<SnapshotListResult>(['snapshot', 'list', parent]);
    assert.deepEqual(
      l2.checkpoints.map((x) => x.checkpoint),
      [r2.checkpoint],
    );
    assert.equal(await exportSha(child, out), sha256(expectedChild));
    assert.equal(await parentSha(), sha256(b));

    // --flatten at once: an independent copy of the current checkpoint.
    const copy = fileUrl(join(dir, 'copy'));
    const cf = await hyperJson<SnapshotCloneResult>([
      'snapshot',
      'clone',
      parent,
      copy,
      '--flatten',
    ]);
    assert.equal(cf.flattened?.copiedBytes, SIZE);
    assert.equal(await exportSha(copy, out), sha256(b));
    const notClone = await hyperJson<ErrorOut>(['snapshot', 'flatten', copy], 2);
    assert.match(notClone.error.message, /is not a clone/);
  });

  it('deleting a clone releases its pin; unpin releases the pin of a clone that is gone', async (t) => {
    const dir = await tempDir(t, 'hyper-unpin-');
    const parent = fileUrl(join(dir, 'parent'));
    const rand = rng(23);
    await writeFile(join(dir, 'a.img'), randomBuffer(rand, SIZE));
    await writeFile(join(dir, 'b.img'), randomBuffer(rand, SIZE));
    const ia = await importImage(join(dir, 'a.img'), parent, true);
    const pins = async (): Promise<string[]> =>
      [...(await objectsOnDisk(join(dir, 'parent'))).keys()].filter((k) => k.startsWith('pin/'));
    const clonesOf = async (checkpoint: number): Promise<string[]> => {
      const l = await hyperJson<SnapshotListResult>(['snapshot', 'list', parent]);
      return l.checkpoints.find((c) => c.checkpoint === checkpoint)?.cloneUrls ?? [];
    };
    const clone = async (name: string): Promise<{ url: string; uuid: string }> => {
      const url = fileUrl(join(dir, name));
      const c = await hyperJson<SnapshotCloneResult>(['snapshot', 'clone', parent, url]);
      return { url, uuid: c.clone.uuid };
    };
    const one = await clone('one');
    const two = await clone('two');
    const three = await clone('three');
    await importImage(join(dir, 'b.img'), parent);
    assert.deepEqual(await clonesOf(ia.checkpoint), [one.url, three.url, two.url].sort());
    assert.equal((await pins()).length, 3);

    // A delete releases the clone's pin on the parent.
    const d1 = await hyperJson<FileDeleteResult>(['file', 'delete', one.url, '--yes']);
    assert.deepEqual(d1.parent, { url: parent, pinKey: `pin/${one.uuid}`, pinReleased: true });
    assert.deepEqual(await clonesOf(ia.checkpoint), [three.url, two.url].sort());

    // A delete that stopped after the head: the rerun learns the pin from a segment's head.
    await unlink(join(dir, 'two', 'head'));
    const d2 = await hyperJson<FileDeleteResult>(['file', 'delete', two.url, '--yes']);
    assert.equal(d2.parent?.pinReleased, true);
    assert.deepEqual(await pins(), [`pin/${three.uuid}`]);

    // A live clone keeps its pin; a name no pin records is not found.
    const live = await hyperJson<ErrorOut>(['snapshot', 'unpin', parent, three.url], 4);
    assert.equal(live.error.code, 'HAS_CLONES');
    assert.match(live.error.message, /the clone exists/);
    const none = await hyperJson<ErrorOut>(
      ['snapshot', 'unpin', parent, fileUrl(join(dir, 'never'))],
      3,
    );
    assert.equal(none.error.code, 'SNAPSHOT_NOT_FOUND');
    assert.deepEqual(await pins(), [`pin/${three.uuid}`]);

    // A clone removed behind hyper's back: file check names its pin (not damage), the pin
    // blocks the parent's delete, and unpin (by the clone's UUID) releases it.
    const fresh = await hyperJson<FileCheckResult>(['file', 'check', parent]);
    assert.deepEqual(fresh.problems, []);
    await rm(join(dir, 'three'), { recursive: true });
    const stale = await hyperJson<FileCheckResult>(['file', 'check', parent]);
    assert.equal(stale.clean, true);
    assert.deepEqual(
      stale.problems.map((p) => [p.kind, p.key]),
      [['stale-pin', `pin/${three.uuid}`]],
    );
    assert.match(stale.problems[0]?.message ?? '', /snapshot unpin/);
    const blocked = await hyperJson<ErrorOut>(['file', 'delete', parent, '--yes'], 4);
    assert.equal(blocked.error.code, 'HAS_CLONES');
    assert.match(blocked.error.message, /three/);
    const u = await hyperJson<SnapshotUnpinResult>(['snapshot', 'unpin', parent, three.uuid]);
    assert.deepEqual(u.released, [
      { key: `pin/${three.uuid}`, checkpoint: ia.checkpoint, cloneUrl: three.url },
    ]);
    assert.deepEqual(u.kept, []);
    assert.deepEqual(await pins(), []);

    // With no pin left, compaction drops the checkpoint the clones started from.
    const r = await hyperJson<CompactCommandResult>([
      'compact',
      parent,
      '--keep-last',
      '1',
      '--grace',
      '0s',
      '--yes',
    ]);
    assert.ok(r.droppedCheckpointCount > 0, JSON.stringify(r));
    const l = await hyperJson<SnapshotListResult>(['snapshot', 'list', parent]);
    assert.deepEqual(
      l.checkpoints.map((c) => c.checkpoint),
      [r.checkpoint],
    );
    const gone = await hyperJson<FileDeleteResult>(['file', 'delete', parent, '--yes']);
    assert.equal(gone.parent, null);
  });
});
