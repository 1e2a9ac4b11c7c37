/**
 * `hyper file set-len` of a volume that `hyper serve --control-socket` serves: the server grows
 * it, beside a client writing, instead of the command failing with LEASE_HELD:
 *   - the grow is committed before the command answers (the head records the new size);
 *   - a connection made after it sees the new size (nbdinfo) and can write past the old end
 *     (nbdsh); fio, connected before and writing all along, verifies every block it wrote;
 *   - a shrink is refused (DEVICE_BUSY) and changes nothing; a shrink without --allow-shrink
 *     is refused before anything is asked; without the socket, LEASE_HELD as before;
 *   - after a restart the volume has the new size and the bytes written past the old end.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { hyper, hyperJson, show } from '../../helpers/cli.js';
import { needTools } from '../../helpers/env.js';
import { nbdsh, run } from '../../helpers/nbd.js';
import { serve, stopServe, volumeToServe } from '../../helpers/serve.js';

const MiB = 1024 * 1024;

interface SetLen {
  previousSize: number;
  size: number;
  checkpoint: number;
  resizedBy: { controlSocket: string; export: string } | null;
}

interface ErrorOut {
  error: { code: string; suggestion?: string };
}

const sizeOf = async (uri: string): Promise<number> => {
  const r = await run('nbdinfo', ['--size', uri]);
  assert.equal(r.code, 0, r.stderr);
  return Number(r.stdout.trim());
};

describe('hyper file set-len of a served volume', () => {
  it('is grown by `serve --control-socket` beside fio; new connections see the new size', async (t) => {
    if (!needTools(t, 'fio', 'nbdinfo', 'nbdsh')) return;
    const { dir, url, wal, sock } = await volumeToServe(t);
    const s = await serve([url, '--wal-url', wal, '--control-socket', sock]);
    try {
      assert.equal(await sizeOf(s.uri), 64 * MiB);
      // fio connects now (told 64 MiB) and writes, verified, while the volume grows.
      const writing = run(
        'fio',
        [
          '--name=grow',
          '--ioengine=nbd',
          `--uri=${s.uri}`,
          '--rw=randwrite',
          '--bs=4k',
          '--iodepth=16',
          '--size=16M',
          '--io_size=64M',
          '--verify=crc32c',
          '--verify_fatal=1',
          '--verify_backlog=256',
          '--randrepeat=1',
        ],
        { timeoutMs: 300_000 },
      );
      const grown = await hyperJson<SetLen>([
        'file',
        'set-len',
        url,
        '--size',
        '+64M',
        '--control-socket',
        sock,
      ]);
      assert.deepEqual(
        { previousSize: grown.previousSize, size: grown.size, by: grown.resizedBy },
        { previousSize: 64 * MiB, size: 128 * MiB, by: { controlSocket: sock, export: 'vol' } },
      );
      const st = await hyperJson<{ size: number }>(['file', 'stat', url]);
      assert.equal(st.size, 128 * MiB, 'committed before the answer');
      assert.equal(await sizeOf(s.uri), 128 * MiB, 'a new connection sees the new size');
      const past = await nbdsh(
        `h.connect_uri("${s.uri}"); h.pwrite(b"\\x5a" * 65536, 100 * 1024 * 1024); h.flush(); print("ok")`,
      );
      assert.equal(past.stdout.trim(), 'ok', past.stderr);
      // The same size again changes nothing; a shrink is refused, with or without the flag.
      const same = await hyperJson<SetLen>([
        'file',
        'set-len',
        url,
        '--size',
        '128M',
        '--control-socket',
        sock,
      ]);
      assert.equal(same.size, 128 * MiB);
      const shrink = await hyperJson<ErrorOut>(
        ['file', 'set-len', url, '--size', '64M', '--allow-shrink', '--control-socket', sock],
        4,
      );
      assert.equal(shrink.error.code, 'DEVICE_BUSY');
      assert.match(shrink.error.suggestion ?? '', /Stop serving it first/);
      const noFlag = await hyperJson<ErrorOut>(
        ['file', 'set-len', url, '--size=-1M', '--control-socket', sock],
        2,
      );
      assert.equal(noFlag.error.code, 'INVALID_ARGUMENT');
      const noSocket = await hyperJson<ErrorOut>(
        ['file', 'set-len', url, '--size', '256M', '--control-socket', join(dir, 'none.sock')],
        4,
      );
      assert.equal(noSocket.error.code, 'LEASE_HELD');
      assert.equal(await sizeOf(s.uri), 128 * MiB, 'the refusals changed nothing');
      const w = await writing;
      assert.equal(w.code, 0, w.stdout + w.stderr);
    } finally {
      assert.equal(await stopServe(s), 0, s.stderr());
    }
    assert.match(s.stderr(), /grew export/);
    // After a restart: the new size, and the block written past the old end.
    const r = await serve([url, '--read-only']);
    try {
      assert.equal(await sizeOf(r.uri), 128 * MiB);
      const back = await nbdsh(
        `h.connect_uri("${r.uri}"); print(h.pread(65536, 100 * 1024 * 1024) == b"\\x5a" * 65536, h.pread(65536, 90 * 1024 * 1024) == bytes(65536))`,
      );
      assert.equal(back.stdout.trim(), 'True True', back.stderr);
    } finally {
      await stopServe(r);
    }
    const check = await hyper(['file', 'check', url, '--deep']);
    assert.equal(check.code, 0, show(check));
  });
});
