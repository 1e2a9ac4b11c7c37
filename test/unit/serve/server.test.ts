/**
 * The serving library (src/serve) in-process, without the CLI: a VolumeServer on file://
 * volumes, on a free port, driven by a raw NBD client. Start takes (or is refused) a single
 * volume's lease; a prefix opens each volume on its first connection; close drains
 * connections, flushes what they wrote and releases the leases; exports can be added and
 * removed while the server runs.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { isHyperError } from '../../../src/errors.js';
import { openStore, parseStoreUrl, type ObjectStore } from '../../../src/format/store/index.js';
import { statVolume } from '../../../src/format/volume/admin.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { lineLogger } from '../../../src/serve/logger.js';
import { VolumeServer, type ServeOptions, type StoreOpener } from '../../../src/serve/server.js';
import { RawClient, req } from '../../helpers/raw-nbd-client.js';
import { ControlClient } from '../../../src/daemon/control.js';
import {
  compactOnlineInServer,
  flushInServer,
  type MaintainedExport,
} from '../../../src/daemon/online.js';
import { readHead } from '../../../src/format/volume/heads.js';
import { checkVolume } from '../../../src/format/volume/check.js';

const MiB = 1024 * 1024;
const NBD_CMD_READ = 0;
const NBD_CMD_WRITE = 1;
const NBD_CMD_FLUSH = 3;
const NBD_REP_ERR_UNKNOWN = 0x80000006;

/** Opens stores like the CLI does (a file:// directory made on request), closed after the test. */
function storeOpener(t: TestContext): {
  open: StoreOpener;
  at: (url: string) => Promise<ObjectStore>;
} {
  const stores: ObjectStore[] = [];
  t.after(() => Promise.allSettled(stores.map((s) => s.close())));
  const open: StoreOpener = async (url, options = {}) => {
    const parsed = parseStoreUrl(url);
    if (options.mkdir && parsed.scheme === 'file') await mkdir(parsed.dir, { recursive: true });
    const s = await openStore(url);
    stores.push(s);
    return s;
  };
  return { open, at: (url) => open(url) };
}

function server(
  t: TestContext,
  options: Omit<ServeOptions, 'listen' | 'logger'>,
): { server: VolumeServer; logs: string[] } {
  const logs: string[] = [];
  const s = new VolumeServer({
    listen: { port: 0, host: '127.0.0.1' },
    logger: lineLogger({ level: 'debug', write: (l) => logs.push(l) }),
    ...options,
  });
  t.after(() => s.close().catch(() => undefined));
  return { server: s, logs };
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'hyper-serve-lib-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const fileUrl = (dir: string): string => `file://${dir}/`;

const portOf = (uri: string): number => Number(/:(\d+)\//.exec(uri)?.[1]);

async function connect(uri: string, name: string): Promise<{ client: RawClient; size: number }> {
  const client = await RawClient.open(portOf(uri));
  await client.handshake();
  return { client, size: await client.go(name) };
}

async function leaseHolder(store: ObjectStore): Promise<string | undefined> {
  const st = await statVolume(store);
  return st.lease?.live ? st.lease.holder : undefined;
}

describe('VolumeServer', () => {
  it('serves a volume URL: lease taken at start; close flushes what was written and releases it', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'vol'));
    const stores = storeOpener(t);
    const { server: s, logs } = server(t, {
      url,
      openStore: stores.open,
      create: { size: 4 * MiB },
      holder: 'library-test',
    });
    await s.start();
    assert.equal(s.uris.length, 1);
    assert.match(s.uris[0]!, /^nbd:\/\/127\.0\.0\.1:\d+\/vol$/);
    assert.deepEqual(s.exports, [{ name: 'vol', url, readOnly: false }]);
    const store = await stores.at(url);
    assert.equal(await leaseHolder(store), 'library-test');

    // A write acknowledged but never flushed by the client, on a connection left open.
    const { client, size } = await connect(s.uris[0]!, 'vol');
    assert.equal(size, 4 * MiB);
    const data = randomBytes(8192);
    client.send(req(NBD_CMD_WRITE, 1n, BigInt(MiB), data.length, 0, data));
    assert.equal((await client.simpleReply()).error, 0);
    client.send(req(NBD_CMD_READ, 2n, BigInt(MiB), data.length));
    assert.equal((await client.simpleReply()).error, 0);
    assert.deepEqual(await client.read(data.length), data);
    assert.equal(s.connections, 1);

    await s.close();
    assert.ok(await client.waitClosed(), 'the connection was closed');
    assert.equal(await leaseHolder(store), undefined, 'lease released');
    const v = await Volume.open(store, { readOnly: true });
    try {
      assert.deepEqual(await v.read(MiB, data.length), data, 'the write was flushed');
    } finally {
      await v.close();
    }
    const text = logs.join('');
    assert.match(text, /^\S+Z info created volume \{"url":"file:\/\/.*","size":4194304\}$/m);
    assert.match(
      text,
      / info serving 1 export read-write \{"uris":\["nbd:\/\/127\.0\.0\.1:\d+\/vol"\]\}/,
    );
    assert.match(text, / info stopping: finishing requests in flight \{"connections":1\}/);
    assert.match(text, / info closed export \{"export":"vol"\}/);
    await s.close(); // idempotent
  });

  it('serves a prefix: one export per volume, each opened on its first connection and kept', async (t) => {
    const dir = await tempDir(t);
    const stores = storeOpener(t);
    const prefix = fileUrl(join(dir, 'pfx'));
    const a = await stores.open(`${prefix}a/`, { mkdir: true });
    const b = await stores.open(`${prefix}team/b/`, { mkdir: true });
    await Volume.create(a, { size: MiB });
    await Volume.create(b, { size: 2 * MiB });
    const { server: s } = server(t, { url: prefix, openStore: stores.open, holder: 'lazy' });
    await s.start();
    assert.deepEqual(
      s.exports.map((e) => [e.name, e.readOnly]),
      [
        ['a', false],
        ['team/b', false],
      ],
    );
    assert.match(s.uris[1]!, /\/team%2Fb$/);
    assert.equal(await leaseHolder(a), undefined, 'nothing opened before a client asks');
    assert.equal(await leaseHolder(b), undefined);

    const first = await connect(s.uris[1]!, 'team/b');
    assert.equal(first.size, 2 * MiB);
    assert.equal(await leaseHolder(b), 'lazy');
    assert.equal(await leaseHolder(a), undefined, 'only the export asked for is opened');
    const second = await connect(s.uris[1]!, 'team/b');
    assert.equal(second.size, 2 * MiB, 'the opened volume is shared');
    first.client.close();
    second.client.close();

    await s.close();
    assert.equal(await leaseHolder(b), undefined, 'lease released');
  });

  it('refuses a volume another writer holds, before listening', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'vol'));
    const stores = storeOpener(t);
    const store = await stores.open(url, { mkdir: true });
    await Volume.create(store, { size: MiB });
    const other = await Volume.open(store, { holder: 'other-writer' });
    try {
      const { server: s } = server(t, { url, openStore: stores.open });
      await assert.rejects(
        s.start(),
        (e) => isHyperError(e, 'LEASE_HELD') && /other-writer/.test(e.message),
      );
      assert.deepEqual(s.uris, []);
    } finally {
      await other.close();
    }
  });

  it('a failed start closes what it opened: the lease is released', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'vol'));
    const stores = storeOpener(t);
    const s = new VolumeServer({
      url,
      openStore: stores.open,
      create: { size: MiB },
      listen: { path: join(dir, 'no-such-dir', 'nbd.sock') },
    });
    await assert.rejects(s.start(), /listen/); // no such directory for the socket
    assert.equal(await leaseHolder(await stores.at(url)), undefined);

    // Unreadable TLS credentials are refused before any volume is created.
    const url2 = fileUrl(join(dir, 'vol2'));
    const tls = new VolumeServer({
      url: url2,
      openStore: stores.open,
      create: { size: MiB },
      listen: { port: 0, host: '127.0.0.1' },
      tls: { certificates: join(dir, 'no-certs') },
    });
    await assert.rejects(tls.start(), (e) => isHyperError(e, 'INVALID_ARGUMENT'));
    assert.equal(existsSync(join(dir, 'vol2')), false);

    assert.throws(
      () =>
        new VolumeServer({ url, openStore: stores.open, create: {}, readOnly: true, listen: {} }),
      (e) => isHyperError(e, 'INVALID_ARGUMENT'),
    );
  });

  it('adds and removes exports while running', async (t) => {
    const dir = await tempDir(t);
    const stores = storeOpener(t);
    const urlA = fileUrl(join(dir, 'a'));
    const urlB = fileUrl(join(dir, 'b'));
    const { server: s } = server(t, {
      url: urlA,
      openStore: stores.open,
      create: { size: MiB },
      holder: 'runtime',
    });
    await s.start();
    await s.addExports(urlB, { create: { size: 2 * MiB } });
    assert.deepEqual(
      s.exports.map((e) => e.name),
      ['a', 'b'],
    );
    assert.match(s.uris[1]!, /\/b$/);
    const b = await stores.at(urlB);
    assert.equal(await leaseHolder(b), 'runtime', 'a volume URL is opened when added');
    const { client, size } = await connect(s.uris[0]!, 'b');
    assert.equal(size, 2 * MiB);
    client.close();

    assert.equal(await s.removeExport('b'), true);
    assert.equal(await s.removeExport('b'), false);
    assert.equal(await leaseHolder(b), undefined, 'lease released on removal');
    const late = await RawClient.open(portOf(s.uris[0]!));
    await late.handshake();
    await assert.rejects(late.go('b'), new RegExp(NBD_REP_ERR_UNKNOWN.toString(16)));
    late.close();
    assert.deepEqual(
      s.exports.map((e) => e.name),
      ['a'],
    );
    await s.close();
  });

  it('answers compact and flush of its volume on its control socket (serve --control-socket)', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'vol'));
    const sock = join(dir, 'run', 'control.sock');
    const stores = storeOpener(t);
    const { server: s } = server(t, {
      url,
      openStore: stores.open,
      create: { size: 4 * MiB },
      holder: 'library-test',
      controlSocket: sock,
    });
    await s.start();
    const store = await stores.at(url);
    const control = new ControlClient(sock);
    const listed = await control.get<{ exports: MaintainedExport[] }>('/v1/exports');
    const uuid = (await readHead(store)).head.uuid;
    assert.deepEqual(listed.exports, [
      {
        name: 'vol',
        url,
        state: 'mapped',
        readOnly: false,
        lease: { holder: 'library-test', epoch: listed.exports[0]!.lease!.epoch },
        volumeUuid: uuid,
      },
    ]);
    // Rounds of overwrites, each flushed: checkpoints the compaction drops.
    const { client } = await connect(s.uris[0]!, 'vol');
    let handle = 1n;
    const expected = Buffer.alloc(256 * 1024);
    for (let round = 1; round <= 4; round++) {
      const data = randomBytes(expected.length);
      client.send(req(NBD_CMD_WRITE, handle++, 0n, data.length, 0, data));
      assert.equal((await client.simpleReply()).error, 0);
      client.send(req(NBD_CMD_FLUSH, handle++, 0n, 0));
      assert.equal((await client.simpleReply()).error, 0);
      data.copy(expected);
    }
    // An acknowledged write not yet committed: `snapshot create`'s flush commits it.
    const late = randomBytes(4096);
    client.send(req(NBD_CMD_WRITE, handle++, BigInt(MiB), late.length, 0, late));
    assert.equal((await client.simpleReply()).error, 0);
    const flushed = await flushInServer(store, url, { controlSocket: sock });
    assert.equal(flushed?.name, 'vol');
    const after = await Volume.open(store, { readOnly: true });
    assert.deepEqual(await after.read(MiB, late.length), late, 'committed by the flush');
    assert.equal(after.info.checkpoint, flushed!.checkpoint);
    await after.close();
    // `hyper compact`'s call: the server compacts its volume online; the client reads on.
    const online = await compactOnlineInServer(store, url, {
      controlSocket: sock,
      policy: { keepLast: 1, graceMs: 0 },
    });
    assert.equal(online?.name, 'vol');
    assert.ok(online!.result.checkpointsDropped >= 3, JSON.stringify(online!.result));
    assert.ok(online!.result.segmentsDeleted >= 3, JSON.stringify(online!.result));
    client.send(req(NBD_CMD_READ, handle++, 0n, expected.length));
    assert.equal((await client.simpleReply()).error, 0);
    assert.deepEqual(await client.read(expected.length), expected);
    // Refused: an unknown export, a bad request, another volume's uuid.
    await assert.rejects(control.post('/v1/exports/nope/flush', {}), { code: 'EXPORT_NOT_FOUND' });
    await assert.rejects(control.post('/v1/exports/vol/compact', { keepLast: 0 }), {
      code: 'INVALID_ARGUMENT',
    });
    await assert.rejects(control.post('/v1/exports/vol/flush', { volumeUuid: '0'.repeat(32) }), {
      code: 'PRECONDITION_FAILED',
    });
    // A second server on the same socket is refused; the first keeps answering.
    const { server: second } = server(t, {
      url: fileUrl(join(dir, 'other')),
      openStore: stores.open,
      create: { size: MiB },
      controlSocket: sock,
    });
    await assert.rejects(second.start(), { code: 'DAEMON_RUNNING' });
    assert.equal((await control.get<{ exports: unknown[] }>('/v1/exports')).exports.length, 1);
    // Closed with the server: the socket goes, and nothing answers there.
    await s.close();
    assert.equal(existsSync(sock), false);
    assert.equal(await flushInServer(store, url, { controlSocket: sock }), undefined);
    const report = await checkVolume(store, { deep: true });
    assert.deepEqual(report.problems, []);
  });
});
