/**
 * `file import -` / `file export -` (stdin and stdout, nothing but the image on stdout),
 * block devices as images (a loop device), and `--progress` lines on a non-terminal stderr.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileUrl, hyper, hyperJson, runJs, show, tempDir } from '../../helpers/cli.js';
import { haveTool, needPrerequisite } from '../../helpers/env.js';

const MiB = 1024 * 1024;

interface Run {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Run hyper with a file as stdin and/or stdout kept as bytes. */
function run(
  args: string[],
  options: { stdin?: string; env?: Record<string, string> } = {},
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [runJs, ...args], {
      env: { ...process.env, NO_COLOR: '1', ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.stdin.on('error', () => undefined); // a command that refuses early closes its stdin
    child.on('close', (code) => resolve({ code: code ?? 1, stdout: Buffer.concat(out), stderr }));
    if (options.stdin !== undefined) {
      void readFile(options.stdin).then((b) => child.stdin.end(b), reject);
    } else child.stdin.end();
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** An image with data, a run of zeros and a partial last sector. */
function image(size: number): Buffer {
  const b = randomBytes(size);
  b.fill(0, MiB, 2 * MiB);
  return b;
}

describe('stdin and stdout', () => {
  it('imports from stdin and exports to stdout byte for byte, with nothing else on stdout', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'in.img');
    const data = image(5 * MiB + 1000);
    await writeFile(src, data);
    const url = fileUrl(join(dir, 'v'));

    const noSize = await run(['file', 'import', '-', url, '--create'], { stdin: src });
    assert.equal(noSize.code, 2, noSize.stderr);
    assert.match(noSize.stderr, /needs --size/);

    const imp = await run(['file', 'import', '-', url, '--create', '--size', '8M', '--json'], {
      stdin: src,
    });
    assert.equal(imp.code, 0, imp.stderr);
    const result = JSON.parse(imp.stdout.toString()) as {
      imageSize: number;
      dataBytes: number;
      zeroBytes: number;
      volumeSize: number;
    };
    assert.equal(result.imageSize, data.length);
    assert.equal(result.volumeSize, 8 * MiB);
    assert.equal(result.zeroBytes, MiB);

    const exp = await run(['file', 'export', url, '-', '--progress'], {
      env: { HYPER_PROGRESS_INTERVAL: '0' },
    });
    assert.equal(exp.code, 0, exp.stderr);
    assert.equal(exp.stdout.length, 8 * MiB);
    const want = Buffer.alloc(8 * MiB);
    data.copy(want);
    assert.equal(sha(exp.stdout), sha(want));
    // Progress and the summary went to stderr.
    assert.match(exp.stderr, /Exporting to stdout: 8 MiB of 8 MiB \(100%\)/);
    assert.match(exp.stderr, /Exported .* to stdout/);

    const json = await run(['file', 'export', url, '-', '--json']);
    assert.equal(json.code, 2);
    assert.equal(json.stdout.length > 0, true); // the error document, not image bytes
    assert.match(json.stdout.toString(), /stdout carries the image/);

    // A reader that stops early (`| head -c 10`): exit 141 as for SIGPIPE, nothing on stderr
    // but the summary's absence (not "a bug in hyper").
    const early = await new Promise<{ code: number | null; stderr: string; got: number }>(
      (resolve, reject) => {
        const child = spawn(process.execPath, [runJs, 'file', 'export', url, '-'], {
          env: { ...process.env, NO_COLOR: '1' },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stderr = '';
        let got = 0;
        child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        child.stdout.once('data', (d: Buffer) => {
          got = d.length;
          child.stdout.destroy();
        });
        child.on('error', reject);
        child.on('close', (code) => resolve({ code, stderr, got }));
      },
    );
    assert.ok(early.got > 0);
    assert.equal(early.code, 141, early.stderr);
    assert.doesNotMatch(early.stderr, /Error|bug/);

    // An input larger than the volume is refused.
    const big = join(dir, 'big.img');
    await writeFile(big, randomBytes(9 * MiB));
    const tooBig = await run(['file', 'import', '-', url, '--json'], { stdin: big });
    assert.equal(tooBig.code, 2, tooBig.stderr);
    assert.match(tooBig.stdout.toString(), /OUT_OF_RANGE/);
  });

  it('prints --progress lines on a non-terminal stderr, and none without it', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'in.img');
    await writeFile(src, image(12 * MiB));
    const url = fileUrl(join(dir, 'v'));
    const env = { HYPER_PROGRESS_INTERVAL: '0' };
    const quiet = await hyper(['file', 'import', src, url, '--create'], { env });
    assert.equal(quiet.code, 0, show(quiet));
    assert.doesNotMatch(quiet.stderr, /Importing/);
    await hyperJson(['file', 'delete', url, '--yes']);
    const loud = await hyper(['file', 'import', src, url, '--create', '--progress', '--json'], {
      env,
    });
    assert.equal(loud.code, 0, show(loud));
    JSON.parse(loud.stdout); // stdout is the result only
    const lines = loud.stderr.split('\n').filter((l) => l.startsWith('Importing'));
    assert.ok(lines.length >= 3, loud.stderr);
    assert.match(lines.at(-1)!, /^Importing .*: 12 MiB of 12 MiB \(100%\)/);
    const check = await hyper(['file', 'check', url, '--deep', '--progress'], { env });
    assert.equal(check.code, 0, show(check));
    assert.match(check.stderr, /^Checking data: \d+ of \d+ segments \(100%\)/m);
    const del = await hyper(['file', 'delete', url, '--yes', '--progress'], { env });
    assert.equal(del.code, 0, show(del));
    assert.match(del.stderr, /^Deleting .*: \d+ of \d+ objects/m);
  });
});

describe('block devices', () => {
  it('imports from and exports to a loop device', async (t) => {
    if (
      !needPrerequisite(
        t,
        process.getuid?.() === 0 && haveTool('losetup') && haveTool('mkfs.ext4'),
        'needs root, losetup and mkfs.ext4',
      )
    )
      return;
    const dir = await tempDir(t);
    const backing = join(dir, 'dev.img');
    const data = image(6 * MiB);
    await writeFile(backing, data);
    const dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
    t.after(() => execFileSync('losetup', ['-d', dev]));
    const url = fileUrl(join(dir, 'v'));
    const imp = await hyperJson<{ imageSize: number; volumeSize: number }>([
      'file',
      'import',
      dev,
      url,
      '--create',
    ]);
    assert.deepEqual([imp.imageSize, imp.volumeSize], [6 * MiB, 6 * MiB]);
    const copy = join(dir, 'copy.img');
    await hyperJson(['file', 'export', url, copy]);
    assert.equal(sha(await readFile(copy)), sha(data));

    // Export onto the device: refused without --overwrite, then every byte written (zeros too).
    const other = fileUrl(join(dir, 'w'));
    await hyperJson(['file', 'create', other, '--size', '6M']);
    const refused = await hyperJson<{ error: { code: string } }>(['file', 'export', other, dev], 4);
    assert.equal(refused.error.code, 'OBJECT_EXISTS');
    // Not under a mounted file system, even with --overwrite: the device is opened exclusively.
    {
      // (Inode tables and journal written now: a lazy init would write under the mount.)
      execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', dev]);
      const mnt = join(dir, 'mnt');
      execFileSync('mkdir', [mnt]);
      execFileSync('mount', [dev, mnt]);
      try {
        const before = sha(await readFile(backing));
        const busy = await hyperJson<{ error: { code: string; message: string } }>(
          ['file', 'export', other, dev, '--overwrite'],
          4,
        );
        assert.equal(busy.error.code, 'DEVICE_BUSY');
        assert.match(busy.error.message, /in use .*mounted/);
        assert.equal(sha(await readFile(backing)), before, 'nothing was written');
      } finally {
        execFileSync('umount', [mnt]);
      }
    }
    await hyperJson(['file', 'export', other, dev, '--overwrite']);
    execFileSync('sync');
    const after = execFileSync('dd', [`if=${dev}`, 'bs=1M', 'iflag=direct', 'status=none'], {
      maxBuffer: 64 * MiB,
    });
    assert.equal(after.length, 6 * MiB);
    assert.ok(
      after.every((b) => b === 0),
      'the device reads as zeros',
    );
    const small = fileUrl(join(dir, 'x'));
    await hyperJson(['file', 'create', small, '--size', '7M']);
    const tooSmall = await hyperJson<{ error: { code: string } }>(
      ['file', 'export', small, dev, '--overwrite'],
      2,
    );
    assert.equal(tooSmall.error.code, 'OUT_OF_RANGE');
  });
});
