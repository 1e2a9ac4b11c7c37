/**
 * Unmapping an export with a client connected (libnbd through nbdsh): the reads it has in
 * flight when the unmap starts are answered with the right bytes, then the connection is
 * closed cleanly, and the volume's lease is released. The store is slowed down (every GET
 * waits) so that the reads are provably still in flight when the unmap begins.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Daemon } from '../../../src/daemon/daemon.js';
import { openDaemonStore } from '../../../src/daemon/run.js';
import { openStore, type ObjectStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { needTools } from '../../helpers/env.js';

const MiB = 1024 * 1024;
const GET_DELAY_MS = 1500;

/** A store whose GETs wait while `slow.on` is set. */
function slowGets(store: ObjectStore, slow: { on: boolean }): ObjectStore {
  const wrap = (s: ObjectStore): ObjectStore => ({
    get url() {
      return s.url;
    },
    get: async (key, o) => {
      if (slow.on) await new Promise((r) => setTimeout(r, GET_DELAY_MS));
      return s.get(key, o);
    },
    head: (key, o) => s.head(key, o),
    put: (key, body, o) => s.put(key, body, o),
    list: (prefix, o) => s.list(prefix, o),
    delete: (keys, o) => s.delete(keys, o),
    sub: (prefix) => wrap(s.sub(prefix)),
    close: () => s.close(),
  });
  return wrap(store);
}

const SCRIPT = `
import json, os, sys
h.connect_uri(os.environ['HYPER_TEST_URI'])
bufs = [nbd.Buffer(65536) for i in range(8)]
cookies = [h.aio_pread(bufs[i], i * ${MiB}) for i in range(8)]
print("sent", flush=True)
sys.stdin.readline()
at_go = h.aio_in_flight()
while h.aio_in_flight() > 0:
    h.poll(-1)
done = [h.aio_command_completed(c) for c in cookies]
good = [bytes(bufs[i].to_bytearray()) == bytes([i + 1]) * 65536 for i in range(8)]
try:
    h.pread(4096, 0)
    after = "answered"
except nbd.Error as e:
    after = "refused"
print(json.dumps({"at_go": at_go, "done": done, "good": good, "after": after}), flush=True)
`;

describe('hyper unmap with a connected client', () => {
  it('answers the requests in flight, then disconnects cleanly and releases the lease', async (t) => {
    if (!needTools(t, 'nbdsh')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-unmap-drain-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const url = `file://${dir}/vol/`;
    await mkdir(join(dir, 'vol'));
    const store = await openStore(url);
    await Volume.create(store, { size: 16 * MiB });
    const w = await Volume.open(store, { holder: 'writer' });
    for (let i = 0; i < 8; i++) await w.write(i * MiB, Buffer.alloc(65536, i + 1));
    await w.close();

    const slow = { on: false };
    const daemon = new Daemon({
      controlSocket: join(dir, 'control.sock'),
      listen: { port: 0, host: '127.0.0.1' },
      stateFile: join(dir, 'state.json'),
      openStore: async (u, o) => slowGets(await openDaemonStore(u, o), slow),
      drainMs: 30_000,
    });
    await daemon.start();
    t.after(() => daemon.stop());
    const mapped = await daemon.map({ url, name: 'vol' });
    slow.on = true;

    const child = spawn('nbdsh', ['-c', SCRIPT], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: {
        ...process.env,
        PATH: `/usr/bin:${process.env.PATH ?? ''}`,
        HYPER_TEST_URI: mapped.uri!,
      },
    });
    let out = '';
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    await new Promise<void>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('sent')) resolve();
      });
      void exited.then(() => reject(new Error(`nbdsh exited early: ${err}`)));
    });
    assert.equal(daemon.list()[0]!.clientCount, 1);
    const started = Date.now();
    const unmapping = daemon.unmap('vol');
    child.stdin.write('go\n');
    const result = await unmapping;
    const took = Date.now() - started;
    assert.equal(await exited, 0, err);
    const r = JSON.parse(out.slice(out.indexOf('{'))) as {
      at_go: number;
      done: boolean[];
      good: boolean[];
      after: string;
    };
    assert.ok(r.at_go > 0, `requests were in flight when the unmap began (${r.at_go})`);
    assert.deepEqual(r.done, Array(8).fill(true), 'every read in flight was answered');
    assert.deepEqual(r.good, Array(8).fill(true), 'with the bytes written');
    assert.equal(r.after, 'refused', 'then the connection was closed');
    assert.deepEqual(result, { name: 'vol', url, disconnectedClientCount: 1, wasMapped: true });
    assert.ok(took >= GET_DELAY_MS - 100, `the unmap waited for the reads (${took} ms)`);
    assert.deepEqual(daemon.list(), []);
    // The lease was released: another writer opens the volume at once.
    const v = await Volume.open(store, { holder: 'next' });
    await v.close();
    await store.close();
  });
});
