/**
 * hyper daemon under systemd's protocols, without systemd as PID 1: socket activation through
 * `systemd-socket-activate` (the NBD port and the control socket passed as named fds), the
 * readiness protocol through a stand-in notify socket, and the unit files checked by
 * `systemd-analyze verify`.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, hyper, repoRoot, runJs, show, tempDir } from '../../helpers/cli.js';
import { startDaemon } from '../../helpers/daemon.js';
import { needTools } from '../../helpers/env.js';
import { run } from '../../helpers/nbd.js';

const MiB = 1024 * 1024;

async function volume(dir: string, name: string): Promise<string> {
  await mkdir(join(dir, name));
  const url = fileUrl(join(dir, name));
  const store = await openStore(url);
  await Volume.create(store, { size: 8 * MiB });
  const v = await Volume.open(store, { holder: 'setup' });
  await v.write(0, Buffer.alloc(4096, 0x5a));
  await v.close();
  await store.close();
  return url;
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

const waitFor = async (what: string, ok: () => boolean, ms = 20_000) => {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

describe('hyper daemon and systemd', () => {
  it('is socket activated: adopts the NBD and control sockets and serves the remembered exports', async (t) => {
    if (!needTools(t, 'systemd-socket-activate', 'nbdinfo', 'nbdsh')) return;
    const dir = await tempDir(t, 'hyper-daemon-sd-');
    const url = await volume(dir, 'a');
    const state = join(dir, 'state.json');
    await writeFile(
      state,
      JSON.stringify({ version: 1, exports: [{ url, name: 'a', source: 'control' }] }),
    );
    const sock = join(dir, 'control.sock');
    const port = await freePort();
    const child = spawn(
      'systemd-socket-activate',
      [
        '-l',
        `127.0.0.1:${port}`,
        '-l',
        sock,
        '--fdname=nbd:control',
        '-E',
        'PATH',
        '-E',
        'HOME',
        process.execPath,
        runJs,
        'daemon',
        '--state-file',
        state,
        '--control-socket',
        sock,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    t.after(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    await waitFor('the sockets', () => existsSync(sock));
    // The daemon is not running yet: the first connection starts it.
    assert.doesNotMatch(err, /daemon ready/);
    const info = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${port}/a`], {
      timeoutMs: 60_000,
    });
    assert.equal(info.code, 0, `${info.stderr}\n${err}`);
    assert.equal(
      (JSON.parse(info.stdout) as { exports: { 'export-size': number }[] }).exports[0]![
        'export-size'
      ],
      8 * MiB,
    );
    assert.match(err, /socket activated \{"nbd":3,"control":4\}/);
    const read = await run('/usr/bin/python3', [
      '-c',
      `import nbd; h = nbd.NBD(); h.connect_uri("nbd://127.0.0.1:${port}/a"); print(h.pread(4096, 0) == b"\\x5a" * 4096)`,
    ]);
    assert.equal(read.stdout.trim(), 'True', read.stderr);
    // The control socket is the inherited one.
    const ls = await hyper(['ls', '--json', '--control-socket', sock]);
    assert.equal(ls.code, 0, show(ls));
    const listed = JSON.parse(ls.stdout) as {
      daemon: { listen: { port: number } };
      exports: { name: string; uri: string }[];
    };
    assert.equal(listed.daemon.listen.port, port);
    assert.deepEqual(
      listed.exports.map((e) => e.uri),
      [`nbd://127.0.0.1:${port}/a`],
    );
    child.kill('SIGTERM');
    assert.equal(await exited, 0, err);
    assert.match(err, /closed export \{"export":"a"\}/);
  });

  it('tells the service manager READY=1, RELOADING=1 and STOPPING=1 through systemd-notify', async (t) => {
    if (!needTools(t, 'systemd-notify', 'python3')) return;
    const dir = await tempDir(t, 'hyper-daemon-notify-');
    const notifySock = join(dir, 'notify.sock');
    const receiver = spawn(
      '/usr/bin/python3',
      [join(repoRoot, 'test', 'helpers', 'notify-receiver.py'), notifySock],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    t.after(() => receiver.kill('SIGKILL'));
    let messages = '';
    receiver.stdout.setEncoding('utf8').on('data', (d: string) => (messages += d));
    await waitFor('the notify receiver', () => messages.includes('listening'));
    const config = join(dir, 'daemon.json');
    await writeFile(config, JSON.stringify({ exports: [] }));
    const d = await startDaemon(
      ['--port', '0', '--state-file', join(dir, 'state.json'), '--config', config],
      {
        controlSocket: join(dir, 'control.sock'),
        env: { NOTIFY_SOCKET: notifySock },
      },
    );
    await waitFor('READY=1', () => /READY=1/.test(messages));
    assert.match(messages, new RegExp(`MAINPID=${d.child.pid}`));
    assert.match(messages, /STATUS=serving 0 export\(s\)/);
    // SIGHUP: RELOADING=1, then READY=1 again.
    d.child.kill('SIGHUP');
    await waitFor('RELOADING=1', () => /RELOADING=1/.test(messages));
    await waitFor('the second READY=1', () => (messages.match(/READY=1/g) ?? []).length >= 2);
    assert.equal(await d.stop(), 0, d.stderr());
    assert.match(messages, /STOPPING=1/);
    assert.doesNotMatch(d.stderr(), /systemd-notify .* failed/);
  });

  it('ships unit files that systemd-analyze verify accepts', async (t) => {
    if (!needTools(t, 'systemd-analyze')) return;
    const dir = await tempDir(t, 'hyper-units-');
    const src = join(repoRoot, 'contrib', 'systemd');
    const units = await readdir(src);
    assert.deepEqual(units.sort(), [
      'hyper-compact@.service',
      'hyper-compact@.timer',
      'hyper-daemon-control.socket',
      'hyper-daemon.service',
      'hyper-daemon.socket',
    ]);
    const paths: string[] = [];
    for (const u of units) {
      // Templates are verified as an instance; ExecStart= must name an existing program.
      const name = u.replace('@.', '@vm1.');
      const text = (await readFile(join(src, u), 'utf8')).replaceAll('/usr/local/bin/hyper', runJs);
      await writeFile(join(dir, name), text);
      paths.push(join(dir, name));
    }
    await copyFile(join(src, 'hyper-daemon.socket'), join(dir, 'hyper-daemon.socket'));
    const r = await run('systemd-analyze', ['verify', '--man=no', ...paths]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr.trim(), '', 'no warnings');
    const service = await readFile(join(src, 'hyper-daemon.service'), 'utf8');
    for (const line of [
      'Type=notify',
      'NotifyAccess=all',
      'ProtectSystem=strict',
      'NoNewPrivileges=yes',
      'PrivateTmp=yes',
      'ExecReload=/bin/kill -HUP $MAINPID',
    ]) {
      assert.ok(service.includes(line), line);
    }
  });
});
