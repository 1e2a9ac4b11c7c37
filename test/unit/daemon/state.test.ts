/** The state file (atomic, zod-validated), the config file, default paths and LISTEN_FDS. */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig } from '../../../src/daemon/config.js';
import { defaultControlSocket, defaultStateFile } from '../../../src/daemon/paths.js';
import { loadState, saveState } from '../../../src/daemon/state.js';
import { inheritedSockets } from '../../../src/daemon/systemd.js';
import { isHyperError } from '../../../src/errors.js';

async function dir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'hyper-daemon-state-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

describe('daemon state file', () => {
  it('is empty when missing, round-trips, and leaves no temporary file', async (t) => {
    const d = await dir(t);
    const path = join(d, 'sub', 'daemon.json');
    assert.deepEqual(await loadState(path), { version: 1, exports: [] });
    const state = {
      version: 1 as const,
      exports: [
        { url: 'file:///srv/a/', name: 'a', source: 'control' as const },
        {
          url: 's3://b/v/',
          name: 'v-old',
          at: { time: '2026-01-31T12:00:00.000Z' },
          endpoint: 'http://127.0.0.1:7480',
          source: 'config' as const,
        },
      ],
    };
    await saveState(path, state);
    assert.deepEqual(await loadState(path), state);
    await saveState(path, { version: 1, exports: [] });
    assert.deepEqual(await loadState(path), { version: 1, exports: [] });
    assert.deepEqual(await readdir(join(d, 'sub')), ['daemon.json']);
  });

  it('refuses a file that is not JSON or does not match, naming the field', async (t) => {
    const d = await dir(t);
    const path = join(d, 'daemon.json');
    await writeFile(path, '{"version":1,"exports":[');
    await assert.rejects(
      loadState(path),
      (e) => isHyperError(e, 'INVALID_ARGUMENT') && /not valid JSON/.test(e.message),
    );
    await writeFile(
      path,
      JSON.stringify({ version: 1, exports: [{ url: 'file:///a/', name: 'a', source: 'x' }] }),
    );
    await assert.rejects(
      loadState(path),
      (e) =>
        isHyperError(e, 'INVALID_ARGUMENT') &&
        /exports\.0\.source/.test(e.message) &&
        /Fix or remove/.test(e.suggestion ?? ''),
    );
    await writeFile(path, JSON.stringify({ version: 2, exports: [] }));
    await assert.rejects(
      loadState(path),
      (e) => isHyperError(e, 'INVALID_ARGUMENT') && /version/.test(e.message),
    );
    await writeFile(
      path,
      JSON.stringify({
        version: 1,
        exports: [{ url: 'file:///a/', name: '../x', source: 'control' }],
      }),
    );
    await assert.rejects(
      loadState(path),
      (e) => isHyperError(e, 'INVALID_ARGUMENT') && /name/.test(e.message),
    );
    await writeFile(path, JSON.stringify({ version: 1, exports: [], extra: true }));
    await assert.rejects(loadState(path), (e) => isHyperError(e, 'INVALID_ARGUMENT'));
  });
});

describe('daemon config file', () => {
  it('normalises URLs and refuses unknown fields and bad URLs', async (t) => {
    const d = await dir(t);
    const path = join(d, 'c.json');
    await writeFile(
      path,
      JSON.stringify({ exports: [{ url: 'file:///srv/vols/a', readOnly: true }] }),
    );
    assert.deepEqual(await loadConfig(path), {
      exports: [{ url: 'file:///srv/vols/a/', readOnly: true }],
    });
    await writeFile(path, JSON.stringify({ exports: [{ url: 'file:///a/', bogus: 1 }] }));
    await assert.rejects(
      loadConfig(path),
      (e) => isHyperError(e, 'INVALID_ARGUMENT') && /bogus|Unrecognized/i.test(e.message),
    );
    await writeFile(path, JSON.stringify({ exports: [{ url: '/srv/a' }] }));
    await assert.rejects(loadConfig(path), (e) => isHyperError(e, 'INVALID_URL'));
    await assert.rejects(loadConfig(join(d, 'missing.json')), (e) =>
      isHyperError(e, 'PATH_NOT_FOUND'),
    );
    assert.equal((await readFile(path, 'utf8')).length > 0, true);
  });
});

describe('daemon default paths', () => {
  it('follow HYPER_CONTROL_SOCKET, systemd directories, root and XDG', () => {
    assert.equal(defaultControlSocket({ HYPER_CONTROL_SOCKET: '/x.sock' }, true), '/x.sock');
    assert.equal(
      defaultControlSocket({ RUNTIME_DIRECTORY: '/run/hyper' }, true),
      '/run/hyper/control.sock',
    );
    assert.equal(defaultControlSocket({}, true), '/run/hyper/control.sock');
    assert.equal(
      defaultControlSocket({ XDG_RUNTIME_DIR: '/run/user/1000' }, false),
      '/run/user/1000/hyper/control.sock',
    );
    assert.equal(
      defaultStateFile({ STATE_DIRECTORY: '/var/lib/hyper' }, false),
      '/var/lib/hyper/daemon.json',
    );
    assert.equal(defaultStateFile({}, true), '/var/lib/hyper/daemon.json');
    assert.equal(
      defaultStateFile({ HOME: '/home/u' }, false),
      '/home/u/.local/state/hyper/daemon.json',
    );
  });
});

describe('socket activation variables', () => {
  it('picks sockets by name, else in order, only for this process, and clears the variables', () => {
    const env: Record<string, string | undefined> = {
      LISTEN_FDS: '2',
      LISTEN_PID: '42',
      LISTEN_FDNAMES: 'control:nbd',
    };
    assert.deepEqual(inheritedSockets(env, 42), { control: 3, nbd: 4 });
    assert.equal(env.LISTEN_FDS, undefined);
    assert.deepEqual(inheritedSockets({ LISTEN_FDS: '2', LISTEN_PID: '42' }, 42), {
      nbd: 3,
      control: 4,
    });
    assert.deepEqual(inheritedSockets({ LISTEN_FDS: '1', LISTEN_FDNAMES: 'unknown' }, 42), {
      nbd: 3,
    });
    assert.equal(inheritedSockets({ LISTEN_FDS: '1', LISTEN_PID: '41' }, 42), undefined);
    assert.equal(inheritedSockets({}, 42), undefined);
    assert.throws(
      () => inheritedSockets({ LISTEN_FDS: 'x' }, 42),
      (e) => isHyperError(e, 'INVALID_ARGUMENT'),
    );
    assert.throws(
      () => inheritedSockets({ LISTEN_FDS: '3' }, 42),
      (e) => isHyperError(e, 'INVALID_ARGUMENT'),
    );
    assert.throws(
      () => inheritedSockets({ LISTEN_FDS: '2', LISTEN_FDNAMES: 'nbd:nbd' }, 42),
      (e) => isHyperError(e, 'INVALID_ARGUMENT'),
    );
  });
});
