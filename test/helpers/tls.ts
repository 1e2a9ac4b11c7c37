/**
 * A throwaway self-signed x509 certificate for TLS tests: `server-cert.pem` and
 * `server-key.pem` in `dir` (the layout `hyper serve --tls-certificates` reads), and the same
 * certificate as `ca-cert.pem` in `clientDir` so that libnbd clients trust it.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './nbd.js';

export async function selfSignedCert(dir: string, clientDir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await mkdir(clientDir, { recursive: true });
  const r = await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1,DNS:localhost',
    '-keyout',
    join(dir, 'server-key.pem'),
    '-out',
    join(dir, 'server-cert.pem'),
  ]);
  assert.equal(r.code, 0, r.stderr);
  await copyFile(join(dir, 'server-cert.pem'), join(clientDir, 'ca-cert.pem'));
}
