/**
 * The CLI next to a live writer, and on a terminal: a volume held open by another process
 * (here the test process itself) can be read and exported but not resized, imported into or
 * deleted without --force (exit 4, LEASE_HELD), and a snapshot of it says what it leaves out;
 * on a pseudo-terminal `file delete` asks and honours the answer.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, hyper, hyperJson, runJs, show, tempDir } from '../../helpers/cli.js';
import { needTools } from '../../helpers/env.js';

const MiB = 1024 * 1024;

interface ErrorOut {
  error: { kind: string; code: string; suggestion?: string; exitCode: number };
}

describe('hyper file next to a live writer', () => {
  it('refuses to resize, import or delete a volume another process holds, unless --force', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'vol'));
    const imagePath = join(dir, 'disk.img');
    await writeFile(imagePath, randomBytes(MiB));
    await hyperJson(['file', 'import', imagePath, url, '--create']);

    const store = await openStore(url);
    const writer = await Volume.open(store, { holder: 'test-writer', leaseTtlMs: 60_000 });
    t.after(async () => {
      await writer.close().catch(() => undefined);
      await store.close();
    });

    const st = await hyperJson<{ lease: { holder: string; state: string } | null }>([
      'file',
      'stat',
      url,
    ]);
    assert.equal(st.lease?.holder, 'test-writer');
    assert.equal(st.lease?.state, 'live');

    const setLen = await hyperJson<ErrorOut>(['file', 'set-len', url, '--size', '2M'], 4);
    assert.equal(setLen.error.code, 'LEASE_HELD');
    // (No server on this host holds it: where one would have been asked, and the way out.)
    assert.match(setLen.error.suggestion ?? '', /--control-socket.*--force/);
    const imported = await hyper(['file', 'import', imagePath, url]);
    assert.equal(imported.code, 4, show(imported));
    assert.match(imported.stderr, /--force/, 'the suggestion names a flag the command has');

    // --force takes the lease over (the writer is fenced), then hands it back to a new writer.
    const grown = await hyperJson<{ size: number }>([
      'file',
      'set-len',
      url,
      '--size',
      '3M',
      '--force',
    ]);
    assert.equal(grown.size, 3 * MiB);
    await assert.rejects(async () => {
      await writer.write(0, Buffer.alloc(4096, 1));
      await writer.flush();
    }, /FENCED|taken over|took over/);
    await writer.close().catch(() => undefined);
    const again = await hyper(['file', 'import', imagePath, url, '--force']);
    assert.equal(again.code, 0, show(again));
    // A live writer again, for the refusals below.
    const writer2 = await Volume.open(store, { holder: 'test-writer', leaseTtlMs: 60_000 });
    t.after(() => writer2.close().catch(() => undefined));

    const exported = await hyper(['file', 'export', url, join(dir, 'out.img')]);
    assert.equal(exported.code, 0, `read-only export works beside the writer: ${show(exported)}`);

    const del = await hyper(['file', 'delete', url, '--yes']);
    assert.equal(del.code, 4, show(del));
    assert.match(del.stderr, /^Error \[LEASE_HELD\]: .*test-writer/m);
    assert.match(del.stderr, /--force/);
    const forced = await hyperJson(['file', 'delete', url, '--yes', '--force']);
    assert.equal(forced.deleted, true);
  });

  it('snapshot create beside a live writer says what the snapshot leaves out', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'vol'));
    await hyperJson(['file', 'create', url, '--size', '4M']);
    const store = await openStore(url);
    const writer = await Volume.open(store, {
      holder: 'test-writer',
      leaseTtlMs: 60_000,
      flushIntervalMs: 0,
    });
    t.after(async () => {
      await writer.close().catch(() => undefined);
      await store.close();
    });
    // Acknowledged, not yet committed: the snapshot pins the checkpoint before it, and says so.
    await writer.write(0, Buffer.alloc(4096, 7));
    const first = await hyper(['snapshot', 'create', url, 'before']);
    assert.equal(first.code, 0, show(first));
    assert.match(first.stdout, /at checkpoint 1\./);
    assert.match(first.stderr, /test-writer is writing to this volume/);
    assert.match(first.stderr, /holds checkpoint 1, committed [\d.]+ s before it/);
    assert.match(first.stderr, /fsfreeze/);
    // Nothing but the result in --json (the note is for people).
    const json = await hyper(['snapshot', 'create', url, 'quiet', '--json']);
    assert.equal(json.code, 0, show(json));
    assert.equal(json.stderr, '');
    await writer.flush();
    await writer.close();
    // No writer: no note.
    const after = await hyper(['snapshot', 'create', url, 'after']);
    assert.equal(after.code, 0, show(after));
    assert.match(after.stdout, /at checkpoint 2\./);
    assert.equal(after.stderr, '');
  });
});

/** Run `hyper …args` on a pseudo-terminal (util-linux `script`), typing `answer` at the prompt. */
function onTerminal(args: string[], answer: string): Promise<{ code: number; output: string }> {
  const quoted = [process.execPath, runJs, ...args]
    .map((a) => `'${a.replaceAll("'", "'\\''")}'`)
    .join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qec', `stty cols 100 rows 30; ${quoted}`, '/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, output });
    });
    // Answer once the question is on the screen.
    const ask = setInterval(() => {
      if (output.includes('[y/N]')) {
        clearInterval(ask);
        child.stdin.end(answer);
      }
    }, 20);
    child.on('close', () => clearInterval(ask));
  });
}

describe('hyper file delete on a terminal', () => {
  it('asks before deleting and honours the answer', async (t) => {
    if (!needTools(t, 'script', 'stty')) return;
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'vol'));
    await hyperJson(['file', 'create', url, '--size', '1M']);

    const no = await onTerminal(['file', 'delete', url], 'n\n');
    assert.equal(no.code, 130, `"n" aborts with exit code 130: ${no.output}`);
    assert.match(no.output, /Delete volume .* and all its checkpoints\? \[y\/N\]/);
    assert.match(no.output, /^Aborted\.\r?$/m);
    assert.doesNotMatch(no.output, /Error|INVALID_ARGUMENT/);
    assert.equal((await hyper(['file', 'stat', url])).code, 0, 'still there');

    const ctrlC = await onTerminal(['file', 'delete', url], '\x03');
    assert.equal(ctrlC.code, 130, ctrlC.output);
    assert.match(ctrlC.output, /Error \[ABORTED\]: Interrupted at the prompt; nothing was changed/);
    assert.equal((await hyper(['file', 'stat', url])).code, 0, 'still there after Ctrl-C');

    const noCompact = await onTerminal(['compact', url, '--keep-last', '1'], 'n\n');
    assert.equal(noCompact.code, 130, noCompact.output);
    assert.match(noCompact.output, /^Aborted\.\r?$/m);
    assert.doesNotMatch(noCompact.output, /Error/);

    const yes = await onTerminal(['file', 'delete', url], 'y\n');
    assert.equal(yes.code, 0, yes.output);
    assert.match(yes.output, /Deleted /);
    assert.equal((await hyper(['file', 'stat', url])).code, 3, 'gone');
  });
});
