/**
 * `hyper daemon` on RGW with real NBD clients: exports mapped, listed and unmapped, and every
 * refused request (missing volume, name taken, a volume another daemon holds, a malformed or
 * oversized control request, a second daemon on the same control socket), `hyper compact` of
 * the served volume (done online by the daemon, or refused through another) and `hyper
 * snapshot create` of it (the daemon commits first), all while fio
 * writes and verifies another export without interruption; then a restart (SIGTERM, and a
 * crash) maps the same export again with its data intact.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { compactSchema, lsSchema, snapshotCreateSchema } from '../../../src/cli/vocabulary.js';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { fileUrl, show, tempDir } from '../../helpers/cli.js';
import { controlCall, startDaemon, type RunningDaemon } from '../../helpers/daemon.js';
import { needS3, needTools } from '../../helpers/env.js';
import { nbdsh, run, type RunResult } from '../../helpers/nbd.js';
import { s3Options, uniqueS3Url } from '../../helpers/s3.js';

const MiB = 1024 * 1024;

interface FioJob {
  error: number;
  write: { total_ios: number };
  read: { total_ios: number };
}

/**
 * fio writes random 4 KiB blocks and verifies each (crc32c) shortly after writing it
 * (verify_backlog), until it is stopped with SIGINT: the traffic lasts exactly as long as
 * the control operations it must run under, however slow the machine.
 */
function fioArgs(uri: string): string[] {
  return [
    '--name=live',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=8',
    '--size=8M',
    '--time_based',
    '--runtime=900',
    '--rate_iops=,100',
    '--verify=crc32c',
    '--verify_backlog=64',
    '--verify_fatal=1',
    '--output-format=json',
  ];
}

const fioJob = (r: RunResult): FioJob =>
  (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: FioJob[] }).jobs[0]!;

async function rawPost(
  sock: string,
  body: Buffer | string,
): Promise<{ status: number; code: string }> {
  const res = await controlCall(sock, 'POST', '/v1/exports', body);
  return { status: res.status, code: (res.body as { error: { code: string } }).error.code };
}

describe('hyper daemon on RGW', () => {
  it('maps, lists and unmaps under live fio traffic; refusals leave it serving; restarts re-map', async (t) => {
    if (!needTools(t, 'fio', 'nbdinfo')) return;
    const cfg = needS3(t);
    if (!cfg) return;
    const dir = await tempDir(t, 'hyper-daemon-it-');
    const urlA = uniqueS3Url(cfg, 'daemon-a');
    const urlB = uniqueS3Url(cfg, 'daemon-b');
    const urlC = fileUrl(join(dir, 'c'));
    await mkdir(join(dir, 'c'));
    for (const u of [urlA, urlB, urlC]) {
      const store = await openStore(u, u.startsWith('s3:') ? s3Options(cfg) : {});
      await Volume.create(store, { size: 64 * MiB });
      await store.close();
    }
    const state = join(dir, 'state.json');
    const sock = join(dir, 'control.sock');
    const daemons: RunningDaemon[] = [];
    t.after(async () => {
      for (const d of daemons) await d.stop('SIGKILL');
    });
    const start = async (controlSocket: string, stateFile: string) => {
      const d = await startDaemon(
        ['--port', '0', '--state-file', stateFile, '--endpoint', cfg.endpoint, '--drain', '5s'],
        { controlSocket },
      );
      daemons.push(d);
      return d;
    };
    const d1 = await start(sock, state);
    const mapA = await d1.ctl(['map', urlA, '--name', 'a', '--json']);
    assert.equal(mapA.code, 0, show(mapA));
    const uriA = (JSON.parse(mapA.stdout) as { uri: string }).uri;
    assert.equal(uriA, `nbd://127.0.0.1:${d1.port}/a`);

    // Live traffic on 'a' for the whole of what follows.
    // Live traffic on 'a' for the whole of what follows.
    const fio = spawn('fio', fioArgs(uriA), { stdio: ['ignore', 'pipe', 'pipe'] });
    let fioOut = '';
    let fioErr = '';
    fio.stdout.setEncoding('utf8').on('data', (d: string) => (fioOut += d));
    fio.stderr.setEncoding('utf8').on('data', (d: string) => (fioErr += d));
    let fioDone = false;
    const fioExit = new Promise<number | null>((r) =>
      fio.once('exit', (code) => {
        fioDone = true;
        r(code);
      }),
    );
    t.after(() => {
      if (!fioDone) fio.kill('SIGKILL');
    });
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(fioDone, false, `fio is running: ${fioErr}`);

    const mapB = await d1.ctl(['map', urlB, '--name', 'b', '--json']);
    assert.equal(mapB.code, 0, show(mapB));
    const infoB = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${d1.port}/b`]);
    assert.equal(infoB.code, 0, infoB.stderr);
    assert.equal(
      (JSON.parse(infoB.stdout) as { exports: { 'export-size': number }[] }).exports[0]![
        'export-size'
      ],
      64 * MiB,
    );

    const ls = await d1.ctl(['ls', '--json']);
    assert.equal(ls.code, 0, show(ls));
    const listed = lsSchema.parse(JSON.parse(ls.stdout));
    assert.deepEqual(
      listed.exports.map((e) => e.name),
      ['a', 'b'],
    );
    const a = listed.exports[0]!;
    assert.ok(a.clientCount >= 1, 'fio is connected to a');
    assert.ok(a.lease !== null && a.lease.epoch >= 1);
    assert.equal(typeof a.checkpointAgeSeconds, 'number');
    assert.equal(typeof a.dirtyBytes, 'number');
    assert.equal(listed.daemon.exportCount, 2);
    assert.ok(listed.daemon.clientCount >= 1);
    const table = await d1.ctl(['ls', '--format', 'table']);
    assert.match(table.stdout, /│ a +│ mapped/);

    // `hyper compact` of a volume the daemon serves read-write: the daemon compacts it online,
    // beside fio, and the command prints what it did.
    const compactArgs = ['compact', urlA, '--keep-last', '1', '--grace', '0s', '--yes'];
    const compacted = await d1.ctl([...compactArgs, '--json', '--endpoint', cfg.endpoint]);
    assert.equal(compacted.code, 0, show(compacted));
    const cr = compactSchema.parse(JSON.parse(compacted.stdout));
    assert.deepEqual(cr.online, { controlSocket: sock, export: 'a' });
    assert.equal(cr.checkpointCountAfter, 1, compacted.stdout);
    assert.equal(cr.keepLast, 1);
    const shown = await d1.ctl([...compactArgs, '--endpoint', cfg.endpoint, '--format', 'plain']);
    assert.equal(shown.code, 0, show(shown));
    assert.match(shown.stdout, /Compacted by.*the server on .*control\.sock, online \(export a\)/);
    assert.match(d1.stderr(), /compacting on request.*"export":"a"/);
    // `hyper snapshot create` of it: the daemon commits what it acknowledged first.
    const snapped = await d1.ctl([
      'snapshot',
      'create',
      urlA,
      'live',
      '--json',
      '--endpoint',
      cfg.endpoint,
    ]);
    assert.equal(snapped.code, 0, show(snapped));
    const sr = snapshotCreateSchema.parse(JSON.parse(snapped.stdout));
    assert.equal(sr.flushedBy?.export, 'a');
    assert.equal(sr.flushedBy?.controlSocket, sock);
    assert.ok(sr.checkpoint >= sr.flushedBy!.checkpoint, snapped.stdout);
    // Refusals: each a code and exit code; the daemon keeps serving.
    const missing = await d1.ctl(['map', uniqueS3Url(cfg, 'daemon-missing'), '--json']);
    assert.equal(missing.code, 3, show(missing));
    assert.equal(
      (JSON.parse(missing.stdout) as { error: { code: string } }).error.code,
      'VOLUME_NOT_FOUND',
    );
    const taken = await d1.ctl(['map', urlB, '--name', 'a', '--json']);
    assert.equal(taken.code, 4, show(taken));
    assert.equal(
      (JSON.parse(taken.stdout) as { error: { code: string } }).error.code,
      'EXPORT_EXISTS',
    );
    const bad = await rawPost(sock, '{"url": 42}');
    assert.deepEqual(bad, { status: 400, code: 'INVALID_ARGUMENT' });
    const big = await rawPost(sock, Buffer.alloc(200 * 1024, 0x20));
    assert.deepEqual(big, { status: 413, code: 'INVALID_ARGUMENT' });
    const sameSocket = await startDaemon(['--port', '0', '--state-file', join(dir, 'x.json')], {
      controlSocket: sock,
    }).then(
      () => 'started',
      (e: { code: number; stderr: string }) => `${e.code} ${/DAEMON_RUNNING/.test(e.stderr)}`,
    );
    assert.equal(sameSocket, '4 true');
    // A second daemon cannot map what the first holds.
    const d2 = await start(join(dir, 'control2.sock'), join(dir, 'state2.json'));
    const held = await d2.ctl(['map', urlA, '--json']);
    assert.equal(held.code, 4, show(held));
    const heldErr = (JSON.parse(held.stdout) as { error: { code: string; message: string } }).error;
    assert.equal(heldErr.code, 'LEASE_HELD');
    assert.match(heldErr.message, /hyper-daemon@/);
    // Asked through a daemon that does not serve it, compaction is refused as before, and the
    // suggestion says where it would have gone.
    const notThere = await d2.ctl([...compactArgs, '--json', '--endpoint', cfg.endpoint]);
    assert.equal(notThere.code, 4, show(notThere));
    const notThereErr = (
      JSON.parse(notThere.stdout) as { error: { code: string; suggestion: string } }
    ).error;
    assert.equal(notThereErr.code, 'LEASE_HELD');
    assert.match(notThereErr.suggestion, /--control-socket/);

    assert.equal(await d2.stop(), 0, d2.stderr());

    // A file:// export too, then unmap what was mapped meanwhile.
    const mapC = await d1.ctl(['map', urlC, '--read-only', '--json']);
    assert.equal(mapC.code, 0, show(mapC));
    for (const name of ['b', 'c']) {
      const u = await d1.ctl(['unmap', name, '--json']);
      assert.equal(u.code, 0, show(u));
    }
    const notMapped = await d1.ctl(['unmap', 'b', '--json']);
    assert.equal(notMapped.code, 3, show(notMapped));
    assert.equal(fioDone, false, `fio ran all along: ${fioErr}`);
    const connected = lsSchema.parse(JSON.parse((await d1.ctl(['ls', '--json'])).stdout));
    assert.equal(connected.exports[0]!.clientCount, 1);
    fio.kill('SIGINT');
    await fioExit;
    assert.doesNotMatch(fioErr, /verify|error/i, fioErr);
    const job = fioJob({ code: 0, stdout: fioOut, stderr: fioErr });
    assert.equal(job.error, 0);
    assert.ok(job.write.total_ios >= 100, `fio wrote (${job.write.total_ios} writes)`);
    assert.ok(job.read.total_ios >= 50, `and verified (${job.read.total_ios} reads)`);

    // A block written and flushed now must be there after each restart.
    const pattern = await nbdsh(
      `h.connect_uri("${uriA}"); h.pwrite(b"\\x5a" * 65536, 32 * 1024 * 1024); h.flush(); print("ok")`,
    );
    assert.equal(pattern.stdout.trim(), 'ok', pattern.stderr);
    const readPattern = async (port: number) => {
      const r = await nbdsh(
        `h.connect_uri("nbd://127.0.0.1:${port}/a"); print(h.pread(65536, 32 * 1024 * 1024) == b"\\x5a" * 65536)`,
      );
      return `${r.stdout.trim()}${r.stderr}`;
    };
    // b's lease was released on unmap: d2's socket is gone, but a library writer opens it.
    const storeB = await openStore(urlB, s3Options(cfg));
    const vb = await Volume.open(storeB, { holder: 'after-unmap' });
    await vb.close();
    await storeB.close();

    // Restart (SIGTERM: drained, flushed, released): the state file maps 'a' again.
    assert.equal(await d1.stop(), 0, d1.stderr());
    const d3 = await start(sock, state);
    const ls3 = JSON.parse((await d3.ctl(['ls', '--json'])).stdout) as {
      exports: { name: string; state: string }[];
    };
    assert.deepEqual(
      ls3.exports.map((e) => [e.name, e.state]),
      [['a', 'mapped']],
    );
    assert.equal(await readPattern(d3.port), 'True');

    // A crash: the restart takes the dead daemon's lease without --force.
    assert.equal(await d3.stop('SIGKILL'), 137);
    const d4 = await start(sock, state);
    const ls4 = JSON.parse((await d4.ctl(['ls', '--json'])).stdout) as {
      exports: { name: string; state: string }[];
    };
    assert.deepEqual(
      ls4.exports.map((e) => [e.name, e.state]),
      [['a', 'mapped']],
    );
    assert.equal(await readPattern(d4.port), 'True');
    assert.equal(await d4.stop(), 0, d4.stderr());

    // No daemon: a clear error.
    const none = await d4.ctl(['ls', '--json']);
    assert.equal(none.code, 5, show(none));
    assert.equal(
      (JSON.parse(none.stdout) as { error: { code: string } }).error.code,
      'DAEMON_NOT_RUNNING',
    );
  });
});
