import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { needTools } from '../../helpers/env.js';
import { memoryExport, nbdsh, run, startServer, type RunningServer } from '../../helpers/nbd.js';
import { selfSignedCert } from '../../helpers/tls.js';

const MiB = 1024 * 1024;

describe('STARTTLS', () => {
  let dir: string;
  let cert: Buffer;
  let key: Buffer;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hyper-nbd-tls-'));
    await selfSignedCert(dir, join(dir, 'client'));
    cert = await readFile(join(dir, 'server-cert.pem'));
    key = await readFile(join(dir, 'server-key.pem'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const tlsUri = (s: RunningServer): string =>
    `nbds://127.0.0.1:${s.port}/d?tls-certificates=${join(dir, 'client')}`;

  for (const require of [false, true]) {
    it(`serves over TLS (${require ? 'required' : 'optional'}) and ${require ? 'refuses' : 'still allows'} plain clients`, async (t) => {
      if (!needTools(t, 'nbdinfo', 'nbdsh', 'openssl')) return;
      const s = await startServer([memoryExport('d', { size: 16 * MiB })], {
        tls: { cert, key, require },
      });
      try {
        const info = await run('nbdinfo', ['--json', tlsUri(s)]);
        assert.equal(info.code, 0, info.stderr);
        const j = JSON.parse(info.stdout) as { TLS: boolean; exports: Record<string, unknown>[] };
        assert.equal(j.TLS, true);
        assert.equal(j.exports[0]!['export-size'], 16 * MiB);
        const rw = await nbdsh(`
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(${JSON.stringify(tlsUri(s))})
assert h.get_tls_negotiated()
data = bytes(range(256)) * 1024
h.pwrite(data, 3 * 1024 * 1024)
assert h.pread(len(data), 3 * 1024 * 1024) == data
h.shutdown()
print("ok")
`);
        assert.equal(rw.code, 0, rw.stderr);
        assert.equal(rw.stdout.trim(), 'ok');
        const plain = await run('nbdinfo', ['--size', s.uriFor('d')]);
        if (require) {
          assert.notEqual(plain.code, 0);
          assert.match(plain.stderr, /TLS/i);
        } else {
          assert.equal(plain.code, 0, plain.stderr);
          assert.equal(plain.stdout.trim(), String(16 * MiB));
        }
        // A server with a certificate reads through 'data' events (TLS reads the socket).
        const conns = s.logs.filter((l) => l.msg === 'nbd connection');
        assert.ok(conns.length >= 3);
        for (const c of conns) assert.equal(c.fields?.reads, 'data events', JSON.stringify(c));
      } finally {
        await s.close();
      }
    });
  }

  it('a server without certificates refuses STARTTLS', async (t) => {
    if (!needTools(t, 'nbdinfo')) return;
    const s = await startServer([memoryExport('d', { size: MiB })]);
    try {
      const r = await run('nbdinfo', ['--size', tlsUri(s)]);
      assert.notEqual(r.code, 0);
    } finally {
      await s.close();
    }
  });
});
