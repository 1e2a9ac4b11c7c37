/**
 * `hyper serve --metrics-port 0` with real NBD clients: the Prometheus endpoint is scraped
 * and parsed (test/helpers/prometheus.ts, strict), and its counters moved by what the clients
 * did — bytes written and read by nbdcopy, a FLUSH, an out-of-range read sent by nbdsh (strict
 * mode off, so the server sees it) counted as EINVAL. On file:// with --log-format json every
 * stderr line is one JSON object and the lines about one connection share its id; on RGW
 * behind the fault proxy the S3 request, byte and retry counters move (retries equal to the
 * 503s the proxy injected).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import { needS3, needTools } from '../../helpers/env.js';
import { s3FaultProxy } from '../../helpers/fault-proxy.js';
import { nbdsh, run } from '../../helpers/nbd.js';
import { scrape, select, total, value } from '../../helpers/prometheus.js';
import { emptyStore, s3Options, uniqueS3Url } from '../../helpers/s3.js';
import { serve, stopServe } from '../../helpers/serve.js';

const MiB = 1024 * 1024;

/** nbdsh: FLUSH, then a read past the end that libnbd would refuse itself in strict mode. */
const flushAndReadPastEnd = (
  uri: string,
  size: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  nbdsh(
    [
      `h.connect_uri(${JSON.stringify(uri)})`,
      'h.flush()',
      'h.set_strict_mode(0)',
      'try:',
      `    h.pread(4096, ${size})`,
      '    print("read past the end succeeded")',
      'except nbd.Error as e:',
      '    print("refused", e.errno)',
      'h.shutdown()',
    ].join('\n'),
  );

interface LogLine {
  time: string;
  level: string;
  msg: string;
  conn?: string;
  [k: string]: unknown;
}

describe('serve --metrics-port', () => {
  it('file://: counters move with nbdcopy and nbdsh traffic; JSON log lines carry connection ids', async (t) => {
    if (!needTools(t, 'nbdcopy', 'nbdsh')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-metrics-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const url = `file://${dir}/vol/`;
    const size = 64 * MiB;
    const s = await serve([
      url,
      '--create',
      '--size',
      String(size),
      '--metrics-port',
      '0',
      '--log-format',
      'json',
      '--log-level',
      'debug',
    ]);
    let stopped = false;
    t.after(async () => {
      if (!stopped) await stopServe(s);
    });
    assert.match(s.metrics ?? '', /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const m = s.metrics!;
    const e0 = await scrape(m);
    assert.equal(e0.types.get('hyper_nbd_requests_total'), 'counter');
    assert.equal(total(e0, 'hyper_nbd_requests_total'), 0);

    const data = randomBytes(8 * MiB);
    const src = join(dir, 'in.bin');
    await writeFile(src, data);
    const w = await run('nbdcopy', [src, s.uri]);
    assert.equal(w.code, 0, w.stderr);
    const dst = join(dir, 'out.bin');
    const r = await run('nbdcopy', [s.uri, dst]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(
      (await readFile(dst)).subarray(0, data.length).equals(data),
      'read back what was written',
    );
    const x = await flushAndReadPastEnd(s.uri, size);
    assert.equal(x.code, 0, x.stderr);
    assert.match(x.stdout, /^refused (22|EINVAL)$/m, x.stdout + x.stderr);

    const vol = { export: 'vol' };
    // A FLUSH returns once its segment lands; the head update follows within 100 ms.
    let e = await scrape(m);
    for (
      let i = 0;
      i < 100 && total(e, 'hyper_volume_commit_duration_seconds_count', vol) < 1;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 20));
      e = await scrape(m);
    }
    assert.ok(
      value(e, 'hyper_nbd_request_bytes_total', { ...vol, command: 'write' }) >= data.length,
    );
    assert.ok(
      value(e, 'hyper_nbd_request_bytes_total', { ...vol, command: 'read' }) >= data.length,
    );
    assert.equal(
      value(e, 'hyper_nbd_request_errors_total', { ...vol, command: 'read', errno: 'EINVAL' }),
      1,
    );
    assert.equal(total(e, 'hyper_nbd_request_errors_total'), 1, 'no other request failed');
    assert.ok(value(e, 'hyper_nbd_requests_total', { ...vol, command: 'flush' }) >= 1);
    const writes = value(e, 'hyper_nbd_requests_total', { ...vol, command: 'write' });
    assert.equal(
      value(e, 'hyper_nbd_request_duration_seconds_count', { ...vol, command: 'write' }),
      writes,
      'every write timed',
    );
    const inf = select(e, 'hyper_nbd_request_duration_seconds_bucket', {
      ...vol,
      command: 'write',
      le: '+Inf',
    });
    assert.equal(inf[0]?.value, writes);
    // nbdcopy opens several connections per run; nbdsh one.
    const conns = value(e, 'hyper_nbd_connections_total', vol);
    assert.ok(conns >= 3, `connections ${conns}`);
    assert.equal(value(e, 'hyper_nbd_connections_accepted_total'), conns);
    // The FLUSH committed everything: segments written, a checkpoint, nothing dirty.
    assert.equal(value(e, 'hyper_volume_dirty_bytes', vol), 0);
    assert.ok(value(e, 'hyper_volume_segments_written_total', vol) >= 1);
    assert.ok(value(e, 'hyper_volume_commit_duration_seconds_count', vol) >= 1);
    assert.ok(
      total(e, 'hyper_store_bytes_total', { ...vol, store: 'file', op: 'PUT' }) >= data.length,
    );
    assert.equal(value(e, 'hyper_volume_lease_held', vol), 1);
    assert.ok(select(e, 'process_resident_memory_bytes').length === 1);
    // Compaction debt: the space sample the first scrape started (before the traffic: the
    // next one is due in 10 minutes) shows in a later one.
    let space = e;
    for (let i = 0; i < 50 && select(space, 'hyper_volume_stored_bytes', vol).length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      space = await scrape(m);
    }
    const stored = value(space, 'hyper_volume_stored_bytes', vol);
    assert.ok(stored > 0, `stored ${stored}`);
    assert.equal(
      value(space, 'hyper_volume_live_bytes', vol) +
        value(space, 'hyper_volume_dead_bytes', vol) +
        value(space, 'hyper_volume_history_bytes', vol) +
        value(space, 'hyper_volume_garbage_bytes', vol) <=
        stored,
      true,
    );

    const healthz = await fetch(m.replace(/metrics$/, 'healthz'));
    assert.equal(healthz.status, 200);

    assert.equal(await stopServe(s), 0, s.stderr());
    stopped = true;
    await assert.rejects(fetch(m), 'the endpoint closes with the server');

    // Every stderr line is one JSON object with time, level and msg.
    const lines = s
      .stderr()
      .split('\n')
      .filter((l) => l !== '');
    const logs = lines.map((l) => {
      const o = JSON.parse(l) as LogLine;
      assert.ok(typeof o.time === 'string' && !Number.isNaN(Date.parse(o.time)), l);
      assert.ok(['debug', 'info', 'warn', 'error'].includes(o.level), l);
      assert.equal(typeof o.msg, 'string', l);
      return o;
    });
    // Lines about one connection share its id: each connection's life is logged under one id.
    const byConn = new Map<string, string[]>();
    for (const o of logs) {
      if (o.msg.startsWith('nbd '))
        assert.equal(typeof o.conn, 'string', `no conn: ${JSON.stringify(o)}`);
      if (o.conn !== undefined) byConn.set(o.conn, [...(byConn.get(o.conn) ?? []), o.msg]);
    }
    assert.equal(byConn.size, conns);
    for (const [id, msgs] of byConn) {
      assert.match(id, /^[0-9a-f]{6}-\d+$/);
      assert.equal(msgs[0], 'nbd connection', `${id}: ${msgs.join(', ')}`);
      assert.ok(msgs.includes('nbd transmission'), `${id}: ${msgs.join(', ')}`);
      assert.equal(msgs.at(-1), 'nbd connection closed', `${id}: ${msgs.join(', ')}`);
    }
    const refused = logs.filter((o) => o.msg === 'nbd request refused');
    assert.equal(refused.length, 1);
    assert.equal(refused[0]!.errno, 'EINVAL');
    assert.equal(refused[0]!.command, 'READ');
    // The refusal is logged under the id of the connection that flushed (nbdsh's).
    const nbdshConn = byConn.get(refused[0]!.conn!)!;
    assert.ok(nbdshConn.includes('nbd transmission'));
    assert.ok(logs.some((o) => o.msg === 'serving metrics' && o.url === m));
  });

  describe('on RGW behind the fault proxy', () => {
    const faulty = s3FaultProxy(1313);

    it('S3 request, byte and retry counters move with the traffic', async (t) => {
      if (!needTools(t, 'nbdcopy', 'nbdsh')) return;
      const c = needS3(t);
      if (!c) return;
      const { proxy, endpoint } = faulty();
      const url = uniqueS3Url(c, 'metrics');
      t.after(async () => emptyStore(await openStore(url, s3Options(c))));
      const env = {
        AWS_ACCESS_KEY_ID: c.accessKeyId,
        AWS_SECRET_ACCESS_KEY: c.secretAccessKey,
        AWS_REGION: c.region,
      };
      proxy.rates = {};
      const s = await serve(
        [url, '--create', '--size', '64M', '--endpoint', endpoint, '--metrics-port', '0'],
        { env },
      );
      try {
        const bucket = {
          export: url.replace(/\/$/, '').split('/').pop()!,
          store: `s3://${c.bucket}`,
        };
        const e0 = await scrape(s.metrics!);
        const put0 = total(e0, 'hyper_store_requests_total', { ...bucket, op: 'PUT' });
        assert.ok(put0 >= 2, 'taking the lease and the head over were PUTs');
        assert.equal(total(e0, 'hyper_store_retries_total'), 0);

        proxy.rates = { slowDown: 0.1 };
        const before = proxy.counts.slowDown;
        const dir = await mkdtemp(join(tmpdir(), 'hyper-metrics-s3-'));
        t.after(() => rm(dir, { recursive: true, force: true }));
        const data = randomBytes(8 * MiB);
        await writeFile(join(dir, 'in.bin'), data);
        const w = await run('nbdcopy', [join(dir, 'in.bin'), s.uri]);
        assert.equal(w.code, 0, w.stderr);
        const x = await flushAndReadPastEnd(s.uri, 64 * MiB);
        assert.match(x.stdout, /^refused (22|EINVAL)$/m, x.stdout + x.stderr);
        // Reads that miss the caches GET from S3.
        const r = await run('nbdcopy', [s.uri, join(dir, 'out.bin')]);
        assert.equal(r.code, 0, r.stderr);
        assert.ok((await readFile(join(dir, 'out.bin'))).subarray(0, data.length).equals(data));
        proxy.rates = {};
        const injected = proxy.counts.slowDown - before;

        const e = await scrape(s.metrics!);
        const puts = total(e, 'hyper_store_requests_total', { ...bucket, op: 'PUT' });
        assert.ok(puts > put0, `PUTs ${put0} → ${puts}`);
        assert.ok(total(e, 'hyper_store_bytes_total', { ...bucket, op: 'PUT' }) >= data.length);
        assert.ok(
          total(e, 'hyper_store_request_duration_seconds_count', { ...bucket, op: 'PUT' }) === puts,
        );
        const retries = total(e, 'hyper_store_retries_total', {
          ...bucket,
          code: 'STORE_UNAVAILABLE',
        });
        assert.ok(injected > 0, 'the proxy injected 503s');
        assert.equal(retries, injected, 'each injected 503 was one retry');
        assert.equal(total(e, 'hyper_store_errors_total', { code: 'STORE_UNAVAILABLE' }), 0);
        assert.equal(
          value(e, 'hyper_nbd_request_errors_total', {
            export: bucket.export,
            command: 'read',
            errno: 'EINVAL',
          }),
          1,
        );
        assert.equal(value(e, 'hyper_volume_lease_held', { export: bucket.export }), 1);
      } finally {
        proxy.rates = {};
        assert.equal(await stopServe(s), 0, s.stderr());
      }
    });
  });
});
