/**
 * An S3 endpoint over TLS, as a self-hosted store with its own CA is usually run: a TLS
 * terminator in front of RGW with a throwaway certificate. With the CA given to Node
 * (NODE_EXTRA_CA_CERTS), a volume is created, imported, exported and served to a real NBD
 * client byte for byte, every request through TLS. Without it, or with a name the certificate
 * does not hold, or https:// to a plain-HTTP port, the command says which, with what to do,
 * instead of a bare "self-signed certificate" or EPROTO.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createServer, type Server } from 'node:tls';
import { hyper, show, tempDir } from '../../helpers/cli.js';
import { needS3, needTools } from '../../helpers/env.js';
import { run } from '../../helpers/nbd.js';
import { ensureBucket, uniqueS3Url } from '../../helpers/s3.js';
import { serve, stopServe } from '../../helpers/serve.js';
import { selfSignedCert } from '../../helpers/tls.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A TLS terminator on `host` forwarding to the plain-HTTP endpoint; counts connections. */
async function tlsProxy(
  certDir: string,
  endpoint: string,
  host: string,
): Promise<{ server: Server; port: number; connections: () => number }> {
  const target = new URL(endpoint);
  let connections = 0;
  const server = createServer(
    {
      key: await readFile(join(certDir, 'server-key.pem')),
      cert: await readFile(join(certDir, 'server-cert.pem')),
    },
    (s) => {
      connections++;
      const u = connect(Number(target.port), target.hostname);
      s.pipe(u).pipe(s);
      s.on('error', () => u.destroy());
      u.on('error', () => s.destroy());
    },
  );
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, host, r));
  return { server, port: (server.address() as AddressInfo).port, connections: () => connections };
}

describe('an S3 endpoint over TLS', () => {
  it('works with its CA given to Node, and names each TLS problem otherwise', async (t) => {
    const cfg = needS3(t);
    if (!cfg) return;
    if (!needTools(t, 'openssl', 'nbdcopy')) return;
    await ensureBucket(cfg);
    const dir = await tempDir(t, 'hyper-s3-tls-');
    await selfSignedCert(join(dir, 'server'), join(dir, 'client'));
    // The certificate names 127.0.0.1 and localhost; 127.0.0.2 is loopback too, not named.
    const proxy = await tlsProxy(join(dir, 'server'), cfg.endpoint, '127.0.0.1');
    const other = await tlsProxy(join(dir, 'server'), cfg.endpoint, '127.0.0.2');
    t.after(() => {
      proxy.server.close();
      other.server.close();
    });
    const trusted = { NODE_EXTRA_CA_CERTS: join(dir, 'client', 'ca-cert.pem') };
    const store = ['--endpoint', `https://localhost:${proxy.port}`];
    const url = uniqueS3Url(cfg, 'tls');

    const data = randomBytes(3 * MiB);
    const img = join(dir, 'in.img');
    await writeFile(img, data);
    const c = await hyper(['file', 'create', url, '--size', '8M', ...store], { env: trusted });
    assert.equal(c.code, 0, show(c));
    const i = await hyper(['file', 'import', img, url, ...store], { env: trusted });
    assert.equal(i.code, 0, show(i));
    const out = join(dir, 'out.img');
    const e = await hyper(['file', 'export', url, out, ...store], { env: trusted });
    assert.equal(e.code, 0, show(e));
    assert.equal(sha((await readFile(out)).subarray(0, data.length)), sha(data));
    // Served: the reads that miss the caches go by the GET path of their own, over TLS too.
    const s = await serve([url, ...store], { env: trusted });
    try {
      const copy = join(dir, 'copy.img');
      const r = await run('nbdcopy', [s.uri, copy], { timeoutMs: 60_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(sha((await readFile(copy)).subarray(0, data.length)), sha(data));
    } finally {
      await stopServe(s);
    }
    assert.ok(proxy.connections() > 0);

    const refused = async (args: string[], env: Record<string, string>): Promise<string> => {
      const r = await hyper(['file', 'stat', url, ...args, '--json'], { env });
      assert.equal(r.code, 5, show(r));
      const err = (
        JSON.parse(r.stdout) as { error: { code: string; message: string; suggestion: string } }
      ).error;
      assert.equal(err.code, 'STORE_UNAVAILABLE');
      return `${err.message}\n${err.suggestion}`;
    };
    assert.match(await refused(store, {}), /is not trusted[\s\S]*NODE_EXTRA_CA_CERTS=/);
    assert.match(
      await refused(['--endpoint', `https://127.0.0.2:${other.port}`], trusted),
      /is not for the host "127\.0\.0\.2"[\s\S]*subjectAltName/,
    );
    const plain = new URL(cfg.endpoint);
    assert.match(
      await refused(['--endpoint', `https://${plain.host}`], trusted),
      /No TLS answer[\s\S]*takes http:\/\//,
    );
    const d = await hyper(['file', 'delete', url, '--yes', ...store], { env: trusted });
    assert.equal(d.code, 0, show(d));
  });
});
