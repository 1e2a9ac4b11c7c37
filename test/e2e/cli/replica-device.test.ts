/**
 * `hyper replica` on a block device (a loop device): a device another program holds (here
 * mounted) is refused, one that holds a file system where the primary's metadata goes is
 * refused unless --force, each with nothing written; a wiped one is formatted, and while
 * `replica serve` holds it nobody else opens it exclusively (nor formats it over).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileUrl, hyperJson, runJs, tempDir } from '../../helpers/cli.js';
import { haveTool, needPrerequisite } from '../../helpers/env.js';

const MiB = 1024 * 1024;
const sha = async (path: string): Promise<string> =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
const sh = (cmd: string, args: string[]): string =>
  execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe('replica format and serve on a block device', () => {
  it('refuses a mounted device and a file system, formats a wiped one, and holds it exclusively while serving', async (t) => {
    const tools = ['losetup', 'mkfs.ext4', 'wipefs', 'mount', 'umount'];
    if (
      !needPrerequisite(
        t,
        process.getuid?.() === 0 && tools.every(haveTool),
        `needs root and ${tools.join(', ')}`,
      )
    )
      return;
    const dir = await tempDir(t);
    const backing = join(dir, 'dev.img');
    await writeFile(backing, '');
    await truncate(backing, 33 * MiB);
    const dev = sh('losetup', ['-f', '--show', backing]).trim();
    t.after(() => sh('losetup', ['-d', dev]));
    sh('mkfs.ext4', ['-q', '-F', dev]);
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    sh('mount', [dev, mnt]);
    let mounted = true;
    t.after(() => {
      if (mounted) sh('umount', [mnt]);
    });
    const format = [
      'replica',
      'format',
      '--file',
      dev,
      '--device-size',
      '32M',
      '--replica',
      fileUrl(join(dir, 'replicas')),
      '--region-size',
      '1M',
    ];
    type Failure = { error: { code: string; message: string; suggestion: string } };

    // Mounted: the exclusive open is refused by the kernel.
    const busy = await hyperJson<Failure>(format, 4);
    assert.equal(busy.error.code, 'PRIMARY_IN_USE');
    assert.match(busy.error.message, /is in use: mounted/);
    assert.match(busy.error.suggestion, /findmnt/);
    sh('umount', [mnt]);
    mounted = false;

    // Unmounted, it still holds an ext4 file system where the metadata would go.
    const before = await sha(backing);
    const fs = await hyperJson<Failure>(format, 4);
    assert.equal(fs.error.code, 'DEVICE_HAS_DATA');
    assert.match(fs.error.message, /ext2\/ext3\/ext4 file system in its first MiB/);
    assert.match(fs.error.suggestion, new RegExp(`wipefs -a ${dev}`));
    assert.equal(await sha(backing), before, 'the refusals wrote nothing');

    // Wiped: formatted (an existing device is copied to the replica on the first serve).
    sh('wipefs', ['-a', '-q', dev]);
    const made = await hyperJson<{ uuid: string; mode: string }>(format);
    assert.equal(made.mode, 'forward-full');

    // Served: nobody else opens it exclusively, and format --force is refused.
    const child = spawn(
      process.execPath,
      [runJs, 'replica', 'serve', '--file', dev, '--uuid', made.uuid, '--port', '0', '--print-uri'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    t.after(async () => {
      child.kill('SIGKILL');
      await exited;
    });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('nbd://')) resolve();
      });
      void exited.then((code) => reject(new Error(`replica serve exited ${code}`)));
    });
    assert.throws(() => sh('mkfs.ext4', ['-q', '-F', dev]), /in use|busy/i);
    const again = await hyperJson<Failure>([...format, '--force'], 4);
    assert.equal(again.error.code, 'PRIMARY_IN_USE');
    child.kill('SIGINT');
    assert.equal(await exited, 0);
  });
});
