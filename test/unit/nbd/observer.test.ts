/**
 * The NBD server's observer and connection ids: each answered request is reported once with
 * its command, bytes, errno and a duration (none for a request refused before dispatch); a
 * connection is reported when accepted, when it starts transmitting and when it closes; every
 * log line about a connection carries its id; a throwing observer breaks nothing.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import type { NbdObserver, NbdRequestEvent } from '../../../src/nbd/observer.js';
import { CMD_FLUSH, CMD_READ, CMD_WRITE, EINVAL } from '../../../src/nbd/protocol.js';
import { memoryExport, startServer } from '../../helpers/nbd.js';
import { RawClient, req } from '../../helpers/raw-nbd-client.js';

const MiB = 1024 * 1024;

function recorder(): NbdObserver & { events: string[]; requests: NbdRequestEvent[] } {
  const events: string[] = [];
  const requests: NbdRequestEvent[] = [];
  return {
    events,
    requests,
    accepted: (conn) => events.push(`accepted ${conn}`),
    transmitting: (conn, name) => events.push(`transmitting ${conn} ${name}`),
    closed: (conn, name) => events.push(`closed ${conn} ${name ?? '-'}`),
    request: (e) => requests.push(e),
  };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('NBD observer', () => {
  it('reports connections and every answered request; logs carry the connection id', async (t) => {
    const rec = recorder();
    const srv = await startServer([memoryExport('m', { size: 4 * MiB })], { observer: rec });
    t.after(() => srv.close());

    const a = await RawClient.open(srv.port!);
    await a.handshake();
    await a.go('m');
    const data = randomBytes(8192);
    a.send(req(CMD_WRITE, 1n, 0n, data.length, 0, data));
    assert.equal((await a.simpleReply()).error, 0);
    a.send(req(CMD_READ, 2n, 0n, 4096));
    assert.equal((await a.simpleReply()).error, 0);
    assert.deepEqual(await a.read(4096), data.subarray(0, 4096));
    a.send(req(CMD_READ, 3n, BigInt(4 * MiB), 512)); // past the end: refused
    assert.equal((await a.simpleReply()).error, EINVAL);
    a.send(req(CMD_FLUSH, 4n, 0n, 0));
    assert.equal((await a.simpleReply()).error, 0);

    const b = await RawClient.open(srv.port!); // never negotiates
    await b.handshake();
    b.close();
    a.close();
    await until(() => rec.events.filter((e) => e.startsWith('closed')).length === 2, 'closes');

    const conns = rec.events.filter((e) => e.startsWith('accepted')).map((e) => e.split(' ')[1]!);
    assert.equal(conns.length, 2);
    assert.match(conns[0]!, /^[0-9a-f]{6}-1$/);
    assert.match(conns[1]!, /^[0-9a-f]{6}-2$/);
    assert.equal(conns[0]!.split('-')[0], conns[1]!.split('-')[0], 'one prefix per server');
    const [ca, cb] = conns as [string, string];
    assert.deepEqual(
      rec.events.filter((e) => !e.startsWith('accepted')).sort(),
      [`closed ${ca} m`, `closed ${cb} -`, `transmitting ${ca} m`].sort(),
    );

    assert.deepEqual(
      rec.requests.map((r) => [r.conn, r.export, r.command, r.bytes, r.errno]),
      [
        [ca, 'm', 'WRITE', 8192, undefined],
        [ca, 'm', 'READ', 4096, undefined],
        [ca, 'm', 'READ', 512, 'EINVAL'],
        [ca, 'm', 'FLUSH', 0, undefined],
      ],
    );
    const seconds = rec.requests.map((r) => r.seconds);
    assert.equal(seconds[2], undefined, 'a refused request has no duration');
    for (const i of [0, 1, 3]) assert.ok(seconds[i]! >= 0 && seconds[i]! < 5);

    // Every log line about a connection names it (negotiation and transmission included).
    const about = (conn: string) => srv.logs.filter((l) => l.fields?.conn === conn);
    assert.ok(srv.logs.length > 0);
    for (const l of srv.logs)
      assert.ok(conns.includes(l.fields?.conn as string), JSON.stringify(l));
    const msgsA = about(ca).map((l) => l.msg);
    for (const m of [
      'nbd connection',
      'nbd transmission',
      'nbd request refused',
      'nbd connection closed',
    ])
      assert.ok(msgsA.includes(m), `${m} logged for ${ca}: ${msgsA.join(', ')}`);
    assert.ok(about(cb).some((l) => l.msg === 'nbd connection closed'));
  });

  it('keeps serving when the observer throws', async (t) => {
    const boom = (): never => {
      throw new Error('observer bug');
    };
    const srv = await startServer([memoryExport('m', { size: MiB })], {
      observer: { accepted: boom, transmitting: boom, closed: boom, request: boom },
    });
    t.after(() => srv.close());
    const c = await RawClient.open(srv.port!);
    await c.handshake();
    assert.equal(await c.go('m'), MiB);
    const data = randomBytes(4096);
    c.send(req(CMD_WRITE, 1n, 0n, data.length, 0, data));
    assert.equal((await c.simpleReply()).error, 0);
    c.send(req(CMD_READ, 2n, 0n, data.length));
    assert.equal((await c.simpleReply()).error, 0);
    assert.deepEqual(await c.read(data.length), data);
    c.close();
  });
});
