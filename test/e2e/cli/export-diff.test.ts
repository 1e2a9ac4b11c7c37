/**
 * `hyper file export-diff` / `hyper file import-diff` through the real CLI on file:// volumes:
 * a chain of diffs (random writes, zeroed and trimmed ranges, a grow and a shrink) applied to a
 * copy of the base reproduces every checkpoint byte for byte (sha256 of `file export`), through
 * files and through a stdout → stdin pipe; a wrong base, a truncated stream and a flipped byte
 * are refused with their exit codes and leave the target as it was.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import {
  fileExportDiffSchema,
  fileImportDiffSchema,
  errorJsonSchema,
} from '../../../src/cli/vocabulary.js';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, hyper, hyperJson, runJs, show, tempDir } from '../../helpers/cli.js';
import { exportSha, objectsOnDisk, randomBuffer, rng } from '../../helpers/volume-content.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const execFileAsync = promisify(execFile);

/** One round of changes to the volume at `url`, committed: returns the new checkpoint. */
async function changeRound(url: string, rand: () => number, round: number): Promise<number> {
  const store = await openStore(url);
  try {
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    try {
      if (round === 1) await v.resize(v.info.size + 2 * MiB);
      if (round === 3) await v.resize(v.info.size - 3 * MiB, { allowShrink: true });
      const size = v.info.size;
      for (let k = 0; k < 16; k++) {
        const off = Math.floor(rand() * (size - 300 * KiB));
        const len = 512 + Math.floor(rand() * 250 * KiB);
        const pick = rand();
        if (pick < 0.6) await v.write(off, randomBuffer(rand, len));
        else if (pick < 0.8) await v.writeZeroes(off, len);
        else await v.trim(off, len);
      }
      return (await v.flush()).checkpoint;
    } finally {
      await v.close();
    }
  } finally {
    await store.close();
  }
}

async function headCheckpoint(url: string): Promise<number> {
  return (await hyperJson<{ checkpoint: number }>(['file', 'stat', url])).checkpoint;
}

describe('hyper file export-diff / import-diff', () => {
  it('a chain of diffs reproduces every checkpoint; bad diffs and wrong bases are refused', async (t) => {
    const dir = await tempDir(t, 'hyper-diff-e2e-');
    const src = fileUrl(join(dir, 'src'));
    const dst = fileUrl(join(dir, 'dst'));
    const rand = rng(2024);

    // The source: 8 MiB with data, its first checkpoint named "base".
    const created = await hyper(['file', 'create', src, '--size', '8M']);
    assert.equal(created.code, 0, show(created));
    const first = await changeRound(src, rand, 0);
    assert.equal((await hyper(['snapshot', 'create', src, 'base'])).code, 0);

    // The target starts as a copy of "base" made with export + import.
    const baseImg = join(dir, 'base.img');
    await exportSha(src, baseImg, ['--at', 'base']);
    const imp = await hyper(['file', 'import', baseImg, dst, '--create']);
    assert.equal(imp.code, 0, show(imp));

    const cps = [first];
    for (let round = 1; round <= 4; round++) cps.push(await changeRound(src, rand, round));
    const want = new Map<number, string>();
    for (const cp of cps)
      want.set(cp, await exportSha(src, join(dir, `src-${cp}.img`), ['--at', String(cp)]));

    // Without --assume-base the first diff is refused: nothing shows what the copy holds.
    const d1 = join(dir, 'd1.diff');
    const exp1 = await hyperJson([
      'file',
      'export-diff',
      src,
      '--from',
      'base',
      '--to',
      String(cps[1]),
      d1,
    ]);
    const e1 = fileExportDiffSchema.parse(exp1);
    assert.equal(e1.fromCheckpoint, first);
    assert.equal(e1.toCheckpoint, cps[1]);
    assert.equal(e1.toSize, 10 * MiB);
    assert.deepEqual(e1.from, { snapshot: 'base' });
    assert.equal(e1.streamBytes, (await readFile(d1)).length);
    const noBase = await hyper(['file', 'import-diff', d1, dst, '--json']);
    assert.equal(noBase.code, 4, show(noBase));
    assert.equal(
      errorJsonSchema.parse(JSON.parse(noBase.stdout)).error.code,
      'PRECONDITION_FAILED',
    );
    assert.match(noBase.stdout, /--assume-base/);

    // The chain: files for the first diffs, a pipe (stdout → stdin) for one of them.
    for (let i = 1; i < cps.length; i++) {
      const from = cps[i - 1] as number;
      const to = cps[i] as number;
      if (i === 3) {
        const { stdout, stderr } = await execFileAsync(
          'sh',
          [
            '-c',
            `"${process.execPath}" "${runJs}" file export-diff "${src}" --from ${from} --to ${to} - | "${process.execPath}" "${runJs}" file import-diff - "${dst}" --json`,
          ],
          { env: { ...process.env, NO_COLOR: '1' } },
        );
        const r = fileImportDiffSchema.parse(JSON.parse(stdout));
        assert.equal(r.spooled, true);
        assert.equal(r.file, '-');
        assert.match(stderr, /Exported the changes of .* to stdout/);
      } else {
        const d = join(dir, `d${i}.diff`);
        if (i > 1) {
          const e = await hyper([
            'file',
            'export-diff',
            src,
            '--from',
            String(from),
            '--to',
            String(to),
            d,
          ]);
          assert.equal(e.code, 0, show(e));
          assert.match(e.stdout, new RegExp(`from checkpoint ${from} to checkpoint ${to}`));
        }
        const r = fileImportDiffSchema.parse(
          await hyperJson(['file', 'import-diff', d, dst, ...(i === 1 ? ['--assume-base'] : [])]),
        );
        assert.equal(r.base, i === 1 ? 'assumed' : 'marker');
        assert.equal(r.spooled, false);
        assert.equal(r.snapshot, `diff-${r.sourceUuid.slice(0, 8)}-${to}`);
        if (i > 1) assert.equal(r.removedSnapshot, `diff-${r.sourceUuid.slice(0, 8)}-${from}`);
      }
      const got = await exportSha(dst, join(dir, `dst-${to}.img`));
      assert.equal(got, want.get(to), `the target holds checkpoint ${to} after diff ${i}`);
    }

    // The next diff, made while the target is at the last checkpoint.
    const last = cps.at(-1) as number;
    await changeRound(src, rand, 5);
    const next = join(dir, 'next.diff');
    assert.equal((await hyper(['file', 'export-diff', src, '--from', String(last), next])).code, 0);
    const bytes = await readFile(next);

    const unchanged = async (
      what: string,
      args: string[],
      code: number,
      errorCode: string,
      message: RegExp,
    ) => {
      const cp = await headCheckpoint(dst);
      const objects = await objectsOnDisk(join(dir, 'dst'));
      const r = await hyper([...args, '--json']);
      assert.equal(r.code, code, `${what}: ${show(r)}`);
      const e = errorJsonSchema.parse(JSON.parse(r.stdout));
      assert.equal(e.error.code, errorCode, `${what}: ${e.error.message}`);
      assert.match(e.error.message, message, what);
      assert.equal(await headCheckpoint(dst), cp, `${what}: the target's checkpoint`);
      assert.deepEqual(
        await objectsOnDisk(join(dir, 'dst')),
        objects,
        `${what}: the target's objects`,
      );
    };

    // Wrong base: a diff the target has already gone past.
    await unchanged(
      'wrong base',
      ['file', 'import-diff', d1, dst],
      4,
      'PRECONDITION_FAILED',
      /Wrong base/,
    );
    // Truncated, anywhere.
    for (const cut of [10, 96 + 40, bytes.length - 1]) {
      const p = join(dir, `cut-${cut}.diff`);
      await writeFile(p, bytes.subarray(0, cut));
      await unchanged(
        `cut at ${cut}`,
        ['file', 'import-diff', p, dst],
        6,
        'CORRUPT_OBJECT',
        /truncated/,
      );
    }
    // A flipped byte in a record's data: named by the record's offset in the stream.
    const flipped = Buffer.from(bytes);
    const at = 96 + 32 + 100;
    flipped[at] = (flipped[at] as number) ^ 0x20;
    const fp = join(dir, 'flipped.diff');
    await writeFile(fp, flipped);
    await unchanged(
      'flipped',
      ['file', 'import-diff', fp, dst],
      6,
      'CHECKSUM_MISMATCH',
      /record at byte 96 .*fails its checksum/,
    );
    // An unknown version.
    const v7 = Buffer.from(bytes);
    v7.writeUInt16LE(7, 4);
    const vp = join(dir, 'v7.diff');
    await writeFile(vp, v7);
    await unchanged(
      'version',
      ['file', 'import-diff', vp, dst],
      2,
      'UNSUPPORTED_FORMAT_VERSION',
      /version 7/,
    );
    // Not a diff at all.
    await unchanged(
      'an image',
      ['file', 'import-diff', baseImg, dst],
      2,
      'INVALID_ARGUMENT',
      /Not a hyper diff stream/,
    );

    // Another writer holds the target's lease: refused once the stream has been verified.
    const store = await openStore(dst);
    const writer = await Volume.open(store, { holder: 'test-writer', leaseTtlMs: 120_000 });
    try {
      const held = await hyper(['file', 'import-diff', next, dst, '--json']);
      assert.equal(held.code, 4, show(held));
      const e = errorJsonSchema.parse(JSON.parse(held.stdout));
      assert.equal(e.error.code, 'LEASE_HELD');
      assert.match(e.error.message, /test-writer/);
    } finally {
      await writer.close();
      await store.close();
    }

    // --dry-run checks without writing; then the real import applies it.
    await unchanged(
      'dry run of a wrong base',
      ['file', 'import-diff', d1, dst, '--dry-run'],
      4,
      'PRECONDITION_FAILED',
      /Wrong base/,
    );
    const cp = await headCheckpoint(dst);
    const dry = fileImportDiffSchema.parse(
      await hyperJson(['file', 'import-diff', next, dst, '--dry-run']),
    );
    assert.equal(dry.dryRun, true);
    assert.equal(dry.checkpoint, null);
    assert.equal(await headCheckpoint(dst), cp);
    const ok = fileImportDiffSchema.parse(await hyperJson(['file', 'import-diff', next, dst]));
    assert.equal(ok.base, 'marker');
    assert.equal(
      await exportSha(dst, join(dir, 'dst-final.img')),
      await exportSha(src, join(dir, 'src-final.img')),
    );

    // stdout carries the diff: --json is refused there.
    const json = await hyper(['file', 'export-diff', src, '--from', 'base', '-', '--json']);
    assert.equal(json.code, 2, show(json));
    assert.match(json.stdout, /stdout carries the diff/);
    // An existing file is kept unless --overwrite.
    const again = await hyper(['file', 'export-diff', src, '--from', 'base', next]);
    assert.equal(again.code, 4, show(again));
    assert.deepEqual(await readFile(next), bytes);
  });

  it('a full stream (no --from) piped into a new volume starts a chain without --assume-base', async (t) => {
    const dir = await tempDir(t, 'hyper-diff-full-');
    const src = fileUrl(join(dir, 'src'));
    const dst = fileUrl(join(dir, 'dst'));
    const rand = rng(77);
    assert.equal((await hyper(['file', 'create', src, '--size', '8M'])).code, 0);
    const cp1 = await changeRound(src, rand, 0);
    const cp2 = await changeRound(src, rand, 1); // grows to 10 MiB
    // A new, smaller volume: the import sets its size.
    assert.equal((await hyper(['file', 'create', dst, '--size', '1M'])).code, 0);
    const { stdout, stderr } = await execFileAsync(
      'sh',
      [
        '-c',
        `"${process.execPath}" "${runJs}" file export-diff "${src}" --to ${cp1} - | "${process.execPath}" "${runJs}" file import-diff - "${dst}" --json`,
      ],
      { env: { ...process.env, NO_COLOR: '1' } },
    );
    assert.match(stderr, new RegExp(`Exported all of checkpoint ${cp1} of .* \\(a full stream\\)`));
    const r = fileImportDiffSchema.parse(JSON.parse(stdout));
    assert.equal(r.base, 'empty');
    assert.equal(r.fromCheckpoint, 0);
    assert.equal(r.zeroRecordCount, 0);
    assert.equal(r.size, 8 * MiB);
    assert.equal(
      await exportSha(dst, join(dir, 'dst-1.img')),
      await exportSha(src, join(dir, 'src-1.img'), ['--at', String(cp1)]),
    );
    // The JSON of a full export says so: from is null.
    const full = join(dir, 'full.diff');
    const e = fileExportDiffSchema.parse(await hyperJson(['file', 'export-diff', src, full]));
    assert.equal(e.from, null);
    assert.equal(e.fromCheckpoint, 0);
    assert.equal(e.toCheckpoint, cp2);
    // Next: an ordinary diff, proved by the marker; the full stream again is refused (exit 4).
    const d = join(dir, 'd.diff');
    const ex = await hyper(['file', 'export-diff', src, '--from', String(cp1), d]);
    assert.equal(ex.code, 0, show(ex));
    const next = fileImportDiffSchema.parse(await hyperJson(['file', 'import-diff', d, dst]));
    assert.equal(next.base, 'marker');
    assert.equal(
      await exportSha(dst, join(dir, 'dst-2.img')),
      await exportSha(src, join(dir, 'src-2.img')),
    );
    const refused = await hyper(['file', 'import-diff', full, dst, '--json']);
    assert.equal(refused.code, 4, show(refused));
    assert.match(refused.stdout, /holds no data/);
  });

  it('an import killed with -9 half way is finished by running it again (--force)', async (t) => {
    const dir = await tempDir(t, 'hyper-diff-kill-');
    const src = fileUrl(join(dir, 'src'));
    const rand = rng(91);
    assert.equal((await hyper(['file', 'create', src, '--size', '16M'])).code, 0);
    let cp1 = 0;
    for (let k = 0; k < 5; k++) cp1 = await changeRound(src, rand, 0);
    let cp2 = cp1;
    for (let k = 0; k < 10; k++) cp2 = await changeRound(src, rand, 2);
    const full = join(dir, 'full.diff');
    const d = join(dir, 'd.diff');
    for (const args of [
      [src, '--to', String(cp1), full],
      [src, '--from', String(cp1), '--to', String(cp2), d],
    ]) {
      const r = await hyper(['file', 'export-diff', ...args]);
      assert.equal(r.code, 0, show(r));
    }
    const want1 = await exportSha(src, join(dir, 'want1.img'), ['--at', String(cp1)]);
    const want2 = await exportSha(src, join(dir, 'want2.img'), ['--at', String(cp2)]);

    /**
     * A new target (segments of 1 MiB: an import commits several as it goes), given `first`
     * if set; then `diff` imported and killed with -9 once `after` of its segments are
     * written, and imported again with --force (the dead process's lease is still held, as
     * the README says). Returns the second import's base, having checked the target reads
     * `want`.
     */
    const killed = async (
      name: string,
      first: string | undefined,
      diff: string,
      after: number,
      want: string,
    ): Promise<string> => {
      const path = join(dir, name);
      const dst = fileUrl(path);
      const made = await hyper([
        'file',
        'create-opt',
        dst,
        '--data-block-size',
        '4K',
        '--segment-size',
        '1M',
        '--size',
        '16M',
      ]);
      assert.equal(made.code, 0, show(made));
      if (first) {
        const r = await hyper(['file', 'import-diff', first, dst]);
        assert.equal(r.code, 0, show(r));
      }
      const segments = async (): Promise<number> => (await readdir(join(path, 'seg'))).length;
      const before = await segments();
      const child = spawn(process.execPath, [runJs, 'file', 'import-diff', diff, dst], {
        stdio: 'ignore',
      });
      const exited = new Promise<NodeJS.Signals | null>((resolve) =>
        child.on('exit', (_code, signal) => resolve(signal)),
      );
      let done = false;
      void exited.then(() => (done = true));
      while (!done && (await segments()) < before + after) await sleep(2);
      child.kill('SIGKILL');
      assert.equal(await exited, 'SIGKILL', `${name}: the import was still running`);
      const landed = (await segments()) - before;
      const r = fileImportDiffSchema.parse(
        await hyperJson(['file', 'import-diff', diff, dst, '--force']),
      );
      t.diagnostic(`${name}: killed after ${landed} of its segments; run again: base ${r.base}`);
      assert.equal(await exportSha(dst, join(dir, `${name}.img`)), want, name);
      return r.base;
    };

    // A diff onto a target that received cp1, killed after 1 and 3 of its segments; and the
    // full stream that starts a chain, into an empty volume.
    const kinds: string[] = [];
    for (const after of [1, 3]) kinds.push(await killed(`dst-${after}`, full, d, after, want2));
    kinds.push(await killed('dst-full', undefined, full, 2, want1));
    // The kills left part of the diff (a plain marker base would mean nothing had landed).
    assert.ok(kinds.includes('resumed'), kinds.join(', '));
    assert.equal(kinds.at(-1), 'resumed', `the full stream: ${kinds.join(', ')}`);
  });
});
