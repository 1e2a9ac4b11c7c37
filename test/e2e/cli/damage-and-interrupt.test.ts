/**
 * Failure paths of the CLI that involve stored data: a damaged segment is reported as a data
 * error naming the object (exit 6) and leaves no partial export behind; SIGINT during an
 * import stops cleanly with exit 130 and leaves a valid volume holding a prefix of whole blocks.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileUrl, hyper, hyperJson, show, tempDir, type CliResult } from '../../helpers/cli.js';

const MiB = 1024 * 1024;

/**
 * An onSpawn hook for `file import`: once a data segment beyond the initial one exists (the
 * import is under way), send SIGINT, `times` times 20 ms apart.
 */
function interruptOnceWriting(volDir: string, times = 1): (child: ChildProcess) => void {
  return (child) => {
    void (async () => {
      for (let i = 0; i < 3000 && child.exitCode === null; i++) {
        const segs = await readdir(join(volDir, 'seg')).catch(() => []);
        if (segs.length >= 2) break;
        await sleep(10);
      }
      for (let n = 0; n < times; n++) {
        if (n > 0) await sleep(20);
        child.kill('SIGINT');
      }
    })();
  };
}

/**
 * The signal must have cut the command short (exit 130): a run that finished before the
 * signal arrived did not test the interruption, so it fails rather than passes.
 */
function assertInterrupted(r: CliResult, what: string): void {
  assert.notEqual(
    r.code,
    0,
    `${what} finished before SIGINT arrived, so the interruption was not tested\n${show(r)}`,
  );
  assert.equal(r.code, 130, show(r));
}

interface ErrorOut {
  error: { kind: string; code: string; message: string; key?: string; exitCode: number };
}

/** The largest segment object of a file:// volume (the one holding the data). */
async function largestSegment(
  volDir: string,
): Promise<{ path: string; key: string; size: number }> {
  let best = { path: '', key: '', size: -1 };
  for (const name of await readdir(join(volDir, 'seg'))) {
    const path = join(volDir, 'seg', name);
    const { size } = await stat(path);
    if (size > best.size) best = { path, key: `seg/${name}`, size };
  }
  return best;
}

describe('hyper file: damaged data and interruption', () => {
  it('reports a corrupt segment as a data error naming the object key (exit 6)', async (t) => {
    const dir = await tempDir(t);
    const volDir = join(dir, 'vol');
    const image = join(dir, 'disk.img');
    await writeFile(image, randomBytes(2 * MiB));
    const imported = await hyper(['file', 'import', image, fileUrl(volDir), '--create']);
    assert.equal(imported.code, 0, show(imported));

    // Flip one byte in the middle of the data of the segment.
    const seg = await largestSegment(volDir);
    const fh = await open(seg.path, 'r+');
    const at = Math.floor(seg.size / 2);
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, at);
    one[0] = (one[0] ?? 0) ^ 0xff;
    await fh.write(one, 0, 1, at);
    await fh.close();

    const out = join(dir, 'out.img');
    const r = await hyper(['file', 'export', fileUrl(volDir), out]);
    assert.equal(r.code, 6, show(r));
    assert.match(r.stderr, /^Error \[(CHECKSUM_MISMATCH|CORRUPT_OBJECT)\]: .*seg\/[0-9a-f]{16}/m);
    assert.ok(r.stderr.includes(seg.key), `names ${seg.key}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /\n\s+at .+:\d+:\d+/, 'no stack trace');

    const j = await hyperJson<ErrorOut>(['file', 'export', fileUrl(volDir), out], 6);
    assert.equal(j.error.kind, 'data');
    assert.equal(j.error.key, seg.key);
    assert.equal(j.error.exitCode, 6);

    // No image, and no temporary file, is left behind.
    assert.deepEqual((await readdir(dir)).sort(), ['disk.img', 'vol']);
  });

  it('stops an import cleanly on SIGINT, leaving a valid volume of whole blocks', async (t) => {
    const dir = await tempDir(t);
    const volDir = join(dir, 'vol');
    const imagePath = join(dir, 'big.img');
    const size = 256 * MiB;
    // Distinct random blocks, quick to generate: one random MiB, stamped per 4 KiB block.
    const base = randomBytes(MiB);
    const fh = await open(imagePath, 'w');
    for (let off = 0; off < size; off += MiB) {
      const chunk = Buffer.from(base);
      for (let b = 0; b < MiB; b += 4096) chunk.writeUInt32LE((off + b) / 4096, b);
      await fh.write(chunk, 0, MiB, off);
    }
    await fh.close();

    const r = await hyper(['file', 'import', imagePath, fileUrl(volDir), '--create'], {
      timeoutMs: 120_000,
      // Interrupt once the import is under way: a data segment beyond the initial one exists.
      onSpawn: interruptOnceWriting(volDir),
    });
    assertInterrupted(r, 'the import');
    assert.match(
      r.stderr,
      /^Error \[ABORTED\]: Import interrupted .* committed as checkpoint \d+/m,
    );

    // The volume opens, and every block is either the image's or still zeros.
    const st = await hyperJson(['file', 'stat', fileUrl(volDir)]);
    assert.equal(st.size, size);
    const out = join(dir, 'out.img');
    await hyperJson(['file', 'export', fileUrl(volDir), out], 0, { timeoutMs: 120_000 });
    const [a, b] = [await readFile(imagePath), await readFile(out)];
    assert.equal(b.length, size);
    const zero = Buffer.alloc(4096);
    let copied = 0;
    for (let off = 0; off < size; off += 4096) {
      const got = b.subarray(off, off + 4096);
      if (got.equals(a.subarray(off, off + 4096))) copied++;
      else assert.ok(got.equals(zero), `block ${off / 4096} is neither the image's nor zeros`);
    }
    assert.equal(copied * 4096, st.usedBytes);
  });

  it('exits at once on a second SIGINT, leaving the last committed checkpoint', async (t) => {
    const dir = await tempDir(t);
    const volDir = join(dir, 'vol');
    const imagePath = join(dir, 'big.img');
    const fh = await open(imagePath, 'w');
    for (let off = 0; off < 256 * MiB; off += 4 * MiB)
      await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, off);
    await fh.close();

    const r = await hyper(['file', 'import', imagePath, fileUrl(volDir), '--create'], {
      timeoutMs: 120_000,
      onSpawn: interruptOnceWriting(volDir, 2),
    });
    assertInterrupted(r, 'the import');
    // The writer died holding its lease, but a read-only export needs none: the volume reads
    // as its last committed checkpoint, a prefix of whole blocks.
    const out = join(dir, 'out.img');
    await hyperJson(['file', 'export', fileUrl(volDir), out], 0, { timeoutMs: 120_000 });
    const [a, b] = [await readFile(imagePath), await readFile(out)];
    const zero = Buffer.alloc(4096);
    for (let off = 0; off < b.length; off += 4096) {
      const got = b.subarray(off, off + 4096);
      assert.ok(got.equals(a.subarray(off, off + 4096)) || got.equals(zero), `block ${off / 4096}`);
    }
  });

  it('stops an export cleanly on SIGINT, leaving no image behind', async (t) => {
    const dir = await tempDir(t);
    const volDir = join(dir, 'vol');
    const imagePath = join(dir, 'big.img');
    const fh = await open(imagePath, 'w');
    for (let off = 0; off < 256 * MiB; off += 4 * MiB)
      await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, off);
    await fh.close();
    await hyperJson(['file', 'import', imagePath, fileUrl(volDir), '--create'], 0, {
      timeoutMs: 120_000,
    });

    const out = join(dir, 'out.img');
    const r = await hyper(['file', 'export', fileUrl(volDir), out], {
      timeoutMs: 120_000,
      // Interrupt once the temporary image holds some data.
      onSpawn: (child) => {
        void (async () => {
          for (let i = 0; i < 3000 && child.exitCode === null; i++) {
            const partial = (await readdir(dir)).find((n) => n.endsWith('.partial'));
            const used = partial
              ? await stat(join(dir, partial)).then(
                  (s) => s.blocks * 512,
                  () => 0,
                )
              : 0;
            if (used > 8 * MiB) break;
            await sleep(5);
          }
          child.kill('SIGINT');
        })();
      },
    });
    const left = (await readdir(dir)).sort();
    assertInterrupted(r, 'the export');
    assert.match(r.stderr, /^Error \[ABORTED\]: Export interrupted .* no image was written/m);
    assert.deepEqual(left, ['big.img', 'vol'], 'neither the image nor a temporary file is left');
  });
});
