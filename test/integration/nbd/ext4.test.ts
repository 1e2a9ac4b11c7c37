import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { needPrerequisite, needTools } from '../../helpers/env.js';
import { memoryExport, run, startServer } from '../../helpers/nbd.js';

const MiB = 1024 * 1024;

async function waitFor(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: 120_000 });
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Expose an export as a file through nbdfuse; returns the file path and a teardown. */
async function fuse(
  dir: string,
  uri: string,
): Promise<{ file: string; proc: ChildProcess; stop: () => Promise<void> }> {
  await mkdir(dir, { recursive: true });
  const file = join(dir, 'disk');
  const proc = spawn('nbdfuse', [file, uri], { stdio: 'ignore' });
  await waitFor(() => existsSync(file), 'nbdfuse file');
  return {
    file,
    proc,
    stop: async () => {
      await run('fusermount3', ['-u', dir]);
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

describe('ext4 on an export through nbdfuse and a loop device', () => {
  it('mkfs, mount, write files, unmount; fsck is clean and files match after re-export', async (t) => {
    if (
      !needTools(
        t,
        'nbdfuse',
        'fusermount3',
        'losetup',
        'mkfs.ext4',
        'e2fsck',
        'mount',
        'umount',
        'debugfs',
      )
    )
      return;
    if (
      !needPrerequisite(
        t,
        process.getuid?.() === 0 && existsSync('/dev/fuse'),
        'needs root and /dev/fuse (loop devices, mount)',
      )
    )
      return;
    const s = await startServer([memoryExport('fs', { size: 256 * MiB })]);
    const work = await mkdtemp(join(tmpdir(), 'hyper-nbd-ext4-'));
    const mnt = join(work, 'mnt');
    await mkdir(mnt);
    let f: Awaited<ReturnType<typeof fuse>> | undefined;
    let loop: string | undefined;
    let mounted = false;
    const files = new Map<string, string>();
    try {
      f = await fuse(join(work, 'fuse1'), s.uri);
      loop = (await must('losetup', ['-f', '--show', f.file])).trim();
      await must('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', loop]);
      await must('mount', [loop, mnt]);
      mounted = true;
      for (let i = 0; i < 8; i++) {
        const data = randomBytes(i === 0 ? 20 * MiB : 100_000 * (i + 1));
        const name = `file${i}.bin`;
        await writeFile(join(mnt, name), data);
        files.set(name, createHash('sha256').update(data).digest('hex'));
      }
      await must('sync', []);
      await must('umount', [mnt]);
      mounted = false;
      await must('losetup', ['-d', loop]);
      loop = undefined;
      await f.stop();
      f = undefined;

      // Re-export: a fresh client sees a clean filesystem holding the same files.
      f = await fuse(join(work, 'fuse2'), s.uri);
      const fsck = await run('e2fsck', ['-fn', f.file], { timeoutMs: 120_000 });
      assert.equal(fsck.code, 0, fsck.stdout + fsck.stderr);
      loop = (await must('losetup', ['-f', '--show', '-r', f.file])).trim();
      await must('mount', ['-o', 'ro', loop, mnt]);
      mounted = true;
      for (const [name, sum] of files) {
        const got = createHash('sha256')
          .update(await readFile(join(mnt, name)))
          .digest('hex');
        assert.equal(got, sum, name);
      }
    } finally {
      if (mounted) await run('umount', [mnt]);
      if (loop !== undefined) await run('losetup', ['-d', loop]);
      if (f !== undefined) await f.stop();
      await s.close();
      await rm(work, { recursive: true, force: true });
    }
  });
});
