/**
 * Usage errors of the CLI: bad flags, bad URLs, missing arguments. They are reported before
 * any store is touched, as `Error [CODE]: …` + `Suggestion: …` on stderr (or a JSON error
 * object on stdout with --json), with exit code 2 and no stack trace.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { hyper, hyperJson, show } from '../../helpers/cli.js';

const noStack = (text: string): void =>
  assert.doesNotMatch(text, /\n\s+at .+:\d+:\d+/, 'no stack trace');

describe('hyper CLI usage errors', () => {
  it('rejects a bad size, naming the flag and the accepted forms (exit 2)', async () => {
    const r = await hyper(['file', 'create', 'file:///tmp/hyper-never/', '--size', '12Q']);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /^Error \[INVALID_ARGUMENT\]: .*"12Q".*--size/m);
    assert.match(r.stderr, /^Suggestion: .*4KiB.*10G.*1TiB/m);
    assert.equal(r.stdout, '');
    noStack(r.stderr);
  });

  it('reports a bad size as a JSON error object on stdout with --json', async () => {
    const out = await hyperJson<{ error: Record<string, unknown> }>(
      ['file', 'create', 'file:///tmp/hyper-never/', '--size', '1.1'],
      2,
    );
    assert.equal(out.error.kind, 'invalid');
    assert.equal(out.error.code, 'INVALID_ARGUMENT');
    assert.equal(out.error.exitCode, 2);
    assert.match(String(out.error.message), /--size.*whole number of bytes/);
  });

  it('checks block sizes against their bounds and powers of two', async () => {
    const notPow2 = await hyper([
      'file',
      'create-opt',
      'file:///tmp/hyper-never/',
      '--data-block-size',
      '12K',
    ]);
    assert.equal(notPow2.code, 2, show(notPow2));
    assert.match(notPow2.stderr, /--data-block-size.*power of two/);
    const tooBig = await hyper([
      'file',
      'create-opt',
      'file:///tmp/hyper-never/',
      '--data-block-size',
      '8M',
    ]);
    assert.equal(tooBig.code, 2, show(tooBig));
    assert.match(tooBig.stderr, /--data-block-size.*at most 4 MiB/);
    const missing = await hyper(['file', 'create-opt', 'file:///tmp/hyper-never/']);
    assert.equal(missing.code, 2, show(missing));
    assert.match(missing.stderr, /data-block-size/);
  });

  it('replica format --assume-zeroed: an existing file needs no first copy; a primary with a header is refused', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-assume-zeroed-'));
    try {
      /** An existing 65 MiB file, and the `replica format` arguments for it. */
      const existing = async (name: string): Promise<string[]> => {
        const file = join(dir, name);
        await writeFile(file, '');
        await truncate(file, 65 * 1024 * 1024);
        const replica = `file://${dir}/replicas/`;
        return ['replica', 'format', '--file', file, '--device-size', '64M', '--replica', replica];
      };
      const plain = await hyperJson<{ mode: string }>(await existing('primary.img'));
      assert.equal(plain.mode, 'forward-full', 'an existing file is copied first');
      const other = await existing('other.img');
      const zeroed = await hyperJson<{ mode: string }>([...other, '--assume-zeroed']);
      assert.equal(zeroed.mode, 'logging');
      const before = await readFile(join(dir, 'other.img'));
      const again = await hyper([...other, '--assume-zeroed', '--force']);
      assert.equal(again.code, 2, show(again));
      assert.match(
        again.stderr,
        /^Error \[INVALID_ARGUMENT\]: .*already a primary.*cannot be assumed zeroed/m,
      );
      assert.match(again.stderr, /^Suggestion: .*blkdiscard -z/m);
      assert.ok((await readFile(join(dir, 'other.img'))).equals(before), 'nothing written');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rejects a bad URL, naming the accepted forms (exit 2)', async () => {
    for (const url of ['http://example.com/vol/', 'file://host/dir/', 'mem://x/']) {
      const r = await hyper(['file', 'stat', url]);
      assert.equal(r.code, 2, show(r));
      assert.match(r.stderr, /^Error \[(INVALID_URL|UNSUPPORTED_STORE)\]: Invalid volume URL/m);
      assert.match(
        r.stderr,
        /file:\/\/\/absolute\/dir\/.*file:\/\/\.\/relative\/dir\/.*s3:\/\/bucket\/prefix\//,
      );
      noStack(r.stderr);
    }
  });

  it('suggests the file:// URL for a bare path', async () => {
    const r = await hyper(['file', 'stat', './vols/demo']);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /Suggestion: Use file:\/\/\.\/vols\/demo\//);
  });

  it('treats unknown flags, missing arguments and conflicting flags as usage errors', async () => {
    const unknown = await hyper(['file', 'stat', 'file:///tmp/hyper-never/', '--bogus']);
    assert.equal(unknown.code, 2, show(unknown));
    assert.match(unknown.stderr, /Error \[UNKNOWN_FLAG\]: Unknown flag --bogus/);
    const missing = await hyper(['file', 'set-len', 'file:///tmp/hyper-never/']);
    assert.equal(missing.code, 2, show(missing));
    assert.match(missing.stderr, /--size/);
    const badRef = await hyper([
      'file',
      'export',
      'file:///tmp/hyper-never/',
      'x.img',
      '--at',
      'no spaces!',
    ]);
    assert.equal(badRef.code, 2, show(badRef));
    assert.match(badRef.stderr, /--at/);
    const sizeWithoutCreate = await hyper([
      'file',
      'import',
      'x.img',
      'file:///tmp/hyper-never/',
      '--size',
      '1G',
    ]);
    assert.equal(sizeWithoutCreate.code, 2, show(sizeWithoutCreate));
    assert.match(sizeWithoutCreate.stderr, /--create/);
  });

  it('rejects a bad checkpoint reference for export --at with the accepted forms', async () => {
    const r = await hyper([
      'file',
      'export',
      'file:///tmp/hyper-never/',
      'x.img',
      '--at',
      '2026-02-31',
    ]);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /"2026-02-31" for --at/);
    assert.match(r.stderr, /ISO-8601.*2h/);
  });

  it('documents every file command with examples including --json', async () => {
    for (const cmd of [
      'create',
      'create-opt',
      'set-len',
      'stat',
      'list',
      'delete',
      'import',
      'export',
    ]) {
      const r = await hyper(['file', cmd, '--help']);
      assert.equal(r.code, 0, show(r));
      assert.match(r.stdout, /EXAMPLES/, cmd);
      assert.match(r.stdout, /--json/, cmd);
      assert.match(r.stdout, /--endpoint/, cmd);
    }
  });
});
