/**
 * Accurate reports: `compact --dry-run` reports what the real run then does (grace period
 * included); `snapshot restore` to a compacted, a future or the current checkpoint says what
 * is kept or that nothing changed; `file list` says why a volume's head cannot be read.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileUrl, hyper, hyperJson, show, tempDir } from '../../helpers/cli.js';

const MiB = 1024 * 1024;

/** A volume with several checkpoints, each overwriting the same 1 MiB. */
async function history(dir: string, n: number): Promise<string> {
  const url = fileUrl(join(dir, 'v'));
  await hyperJson(['file', 'create', url, '--size', '4M']);
  for (let i = 0; i < n; i++) {
    const img = join(dir, `i${i}.img`);
    await writeFile(img, randomBytes(MiB));
    await hyperJson(['file', 'import', img, url]);
  }
  return url;
}

describe('compact --dry-run', () => {
  it('reports what the real run then does, under the grace period and without it', async (t) => {
    const dir = await tempDir(t);
    const url = await history(dir, 3);
    type R = {
      deletedSegmentCount: number;
      deferredSegmentCount: number;
      reclaimedBytes: number;
      checkpointCountAfter: number;
    };
    const fields = (r: R) => ({
      deleted: r.deletedSegmentCount,
      deferred: r.deferredSegmentCount,
      reclaimed: r.reclaimedBytes,
      after: r.checkpointCountAfter,
    });
    for (const grace of [[], ['--grace', '0s']]) {
      const args = ['compact', url, '--keep-last', '1', ...grace];
      const dry = await hyperJson<R>([...args, '--dry-run']);
      const real = await hyperJson<R>([...args, '--yes']);
      assert.deepEqual(fields(dry), fields(real), grace.join(' ') || 'default grace');
      if (grace.length === 0) assert.ok(real.deferredSegmentCount > 0 && real.reclaimedBytes === 0);
      else assert.ok(real.deletedSegmentCount > 0 && real.reclaimedBytes > 0);
    }
  });

  it('names the grace period in stat --space', async (t) => {
    const dir = await tempDir(t);
    const url = await history(dir, 3);
    // Dropped history whose segments are kept for the grace period: garbage.
    await hyperJson(['compact', url, '--keep-last', '1', '--grace', '1h', '--yes']);
    const r = await hyper(['file', 'stat', url, '--space'], { env: { HYPER_FORMAT: '' } });
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /--grace period, 10m by default/);
  });
});

describe('snapshot restore reports', () => {
  it('says a compacted checkpoint is gone and which are kept; the current state changes nothing', async (t) => {
    const dir = await tempDir(t);
    const url = await history(dir, 3); // checkpoints 1 (create), 2, 3, 4
    await hyperJson(['compact', url, '--keep-last', '2', '--grace', '0s', '--yes']);
    const gone = await hyperJson<{ error: { code: string; message: string } }>(
      ['snapshot', 'restore', url, '--to', '2'],
      3,
    );
    assert.equal(gone.error.code, 'CHECKPOINT_NOT_FOUND');
    assert.match(
      gone.error.message,
      /^Checkpoint 2 was compacted away; checkpoints \d+ to \d+ are kept/,
    );
    const future = await hyperJson<{ error: { message: string } }>(
      ['snapshot', 'restore', url, '--to', '99'],
      3,
    );
    assert.match(future.error.message, /does not exist yet \(the current checkpoint is \d+\)/);

    const before = await hyperJson<{ checkpoint: number }>(['file', 'stat', url]);
    for (const to of ['2099-01-01T00:00:00Z', String(before.checkpoint)]) {
      const r = await hyper(['snapshot', 'restore', url, '--to', to]);
      assert.equal(r.code, 0, show(r));
      assert.match(r.stdout, /its current state.*nothing changed/);
      const j = await hyperJson<{ unchanged: boolean; checkpoint: number | null }>([
        'snapshot',
        'restore',
        url,
        '--to',
        to,
      ]);
      assert.equal(j.unchanged, true);
      assert.equal(j.checkpoint, null);
    }
    const after = await hyperJson<{ checkpoint: number }>(['file', 'stat', url]);
    assert.equal(after.checkpoint, before.checkpoint);
  });
});

describe('file list status', () => {
  it('shows why a volume cannot be read instead of 0 B and 1970', async (t) => {
    const dir = await tempDir(t);
    await hyperJson(['file', 'create', fileUrl(join(dir, 'good')), '--size', '1M']);
    await hyperJson(['file', 'create', fileUrl(join(dir, 'bad')), '--size', '1M']);
    await writeFile(join(dir, 'bad', 'head'), 'garbage');
    const r = await hyper(['file', 'list', fileUrl(dir)], { env: { HYPER_FORMAT: '' } });
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /STATUS/);
    // Not a terminal: the plain format, tab-separated.
    assert.match(r.stdout, /^bad\/\t-\t-\t-\tVolume head is damaged/m);
    assert.match(r.stdout, /^good\/\t1 MiB\t.*\tok$/m);
    assert.doesNotMatch(r.stdout, /1970/);
  });
});
