// Cross-process atomicity of the file store: child processes race on one key.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { FileStore } from '../../../../src/format/store/file.js';

const child = fileURLToPath(new URL('../../../helpers/file-store-race-child.ts', import.meta.url));
const base = mkdtempSync(join(tmpdir(), 'hyper-file-race-'));
after(() => rmSync(base, { recursive: true, force: true }));

function run(args: string[], onReady?: () => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', child, ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (onReady && out.startsWith('ready\n')) {
        out = out.slice('ready\n'.length);
        onReady();
        onReady = undefined;
      }
    });
    p.on('error', reject);
    p.on('close', (code) =>
      code === 0 ? resolve(out.trim()) : reject(new Error(`child exited ${code}: ${out}`)),
    );
  });
}

describe('file:// across processes', () => {
  it('create-only: exactly one of 8 processes wins', { timeout: 120_000 }, async () => {
    for (let round = 0; round < 2; round++) {
      const dir = join(base, `create${round}`);
      const { mkdir } = await import('node:fs/promises');
      await mkdir(dir);
      const go = join(base, `go${round}`);
      const children = 8;
      let ready = 0;
      const outs = await Promise.all(
        Array.from({ length: children }, (_, i) =>
          run([dir, 'create', String(i), go], () => {
            if (++ready === children) writeFileSync(go, '');
          }),
        ),
      );
      assert.equal(outs.filter((o) => o === 'won').length, 1, outs.join(','));
      assert.equal(outs.filter((o) => o === 'lost').length, children - 1, outs.join(','));
      const winner = (await new FileStore(dir).get('race')).body.toString();
      assert.match(winner, /^child \d$/);
    }
  });

  it('CAS increments from 4 processes lose no update', { timeout: 120_000 }, async () => {
    const dir = join(base, 'cas');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir);
    await new FileStore(dir).put('counter', Buffer.from('0'));
    const perChild = 40;
    const outs = await Promise.all(
      Array.from({ length: 4 }, (_, i) => run([dir, 'cas', String(i), String(perChild)])),
    );
    for (const o of outs) assert.match(o, /^done \d+$/);
    const final = Number((await new FileStore(dir).get('counter')).body.toString());
    assert.equal(final, 4 * perChild);
  });
});
