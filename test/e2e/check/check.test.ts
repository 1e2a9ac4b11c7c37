import assert from 'node:assert/strict';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { hyper, tempDir } from '../../helpers/cli.js';

describe('hyper file check', () => {
  it('is clean on a healthy volume and names damaged and missing segments (exit 6)', async (t) => {
    const dir = await tempDir(t);
    const url = `file://${dir}/vol/`;
    assert.equal((await hyper(['file', 'create', url, '--size', '16M'])).code, 0);
    const img = join(dir, 'img');
    await writeFile(img, Buffer.alloc(2 * 1024 * 1024, 0x5a));
    assert.equal((await hyper(['file', 'import', img, url])).code, 0);
    assert.equal((await hyper(['file', 'import', img, url])).code, 0);
    const clean = await hyper(['file', 'check', url, '--deep', '--json']);
    assert.equal(clean.code, 0, clean.stderr);
    const ok = JSON.parse(clean.stdout) as {
      clean: boolean;
      checkedBlockCount: number;
      problems: unknown[];
    };
    assert.equal(ok.clean, true);
    assert.equal(ok.checkedBlockCount, 1024, 'both checkpoints’ blocks are verified');

    const segs = (await readdir(join(dir, 'vol', 'seg'))).sort();
    const last = segs.at(-1) as string;
    const path = join(dir, 'vol', 'seg', last);
    const bytes = await readFile(path);
    bytes.writeUInt8((bytes.at(-5) ?? 0) ^ 0xff, bytes.length - 5);
    await writeFile(path, bytes);
    const shallow = await hyper(['file', 'check', url]);
    assert.equal(shallow.code, 0, 'a data block is only read with --deep');
    const deep = await hyper(['file', 'check', url, '--deep']);
    assert.equal(deep.code, 6);
    assert.match(deep.stdout, /DAMAGED/);
    assert.ok(deep.stdout.includes(`seg/${last}`), deep.stdout);

    await rm(path);
    const gone = await hyper(['file', 'check', url, '--json']);
    assert.equal(gone.code, 6);
    const r = JSON.parse(gone.stdout) as { problems: { kind: string; key: string }[] };
    assert.ok(
      r.problems.some((p) => p.kind === 'missing' && p.key === `seg/${last}`),
      gone.stdout,
    );
  });
});
