/**
 * Crash trials: `hyper serve` runs as a child process while a libnbd writer records which
 * writes an acknowledged FLUSH (or FUA) covered; the server is SIGKILLed at a random moment,
 * restarted (taking the dead server's lease without --force: its holder is gone), and every
 * block is read back:
 * each must hold its last durable write or a later write of that block — never an older
 * value, another block's data or a torn mix. HYPER_CRASH_TRIALS sets the count (CI: 20).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { needTools } from '../../helpers/env.js';
import { serve, stopServe } from '../../helpers/serve.js';
import { rng } from '../../helpers/rng.js';

const writerPy = fileURLToPath(new URL('../../helpers/crash-writer.py', import.meta.url));
const BLOCKS = 2048;
const TRIALS = Number(process.env.HYPER_CRASH_TRIALS ?? 20);

function run(
  cmd: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.on('exit', (code) => resolve({ code: code ?? 128, stdout, stderr }));
  });
}

/** Per block: every write (n) in order, and the newest durable one. */
/**
 * Per block: every write that may be in the volume (sent, acknowledged or not), and the newest
 * write that an acknowledged FLUSH (or its own FUA) made durable.
 */
function analyse(log: string): {
  writes: Map<number, number[]>;
  durable: Map<number, number>;
  flushes: number;
} {
  const writes = new Map<number, number[]>();
  const acked = new Map<number, number[]>();
  let lastFlush = 0;
  let flushes = 0;
  const fua = new Set<number>();
  const add = (m: Map<number, number[]>, blk: number, n: number): void => {
    const l = m.get(blk);
    if (l) l.push(n);
    else m.set(blk, [n]);
  };
  for (const line of log.split('\n')) {
    const [kind, a, b] = line.split(' ');
    if (kind === 'I') add(writes, Number(b), Number(a));
    else if (kind === 'W') add(acked, Number(b), Number(a));
    else if (kind === 'F') {
      lastFlush = Number(a);
      flushes++;
    } else if (kind === 'U') fua.add(Number(a));
  }
  const durable = new Map<number, number>();
  for (const [blk, ns] of acked) {
    const d = ns.filter((n) => n <= lastFlush || fua.has(n));
    if (d.length > 0) durable.set(blk, Math.max(...d));
  }
  return { writes, durable, flushes };
}

describe('crash trials: SIGKILL of hyper serve', () => {
  // Without a WAL; with one that logs each write before its reply; with one that logs at FLUSH.
  for (const mode of ['none', 'wal', 'wal-at-flush'] as const) {
    const wal = mode !== 'none';
    const label = {
      none: '',
      wal: ' (with a WAL)',
      'wal-at-flush': ' (with a WAL written at FLUSH)',
    };
    it(`loses no acknowledged flush${label[mode]} over ${TRIALS / 2} trials`, async (t) => {
      if (!needTools(t, '/usr/bin/python3', 'nbdcopy')) return;
      const dir = await mkdtemp(join(tmpdir(), 'hyper-crash-'));
      t.after(() => rm(dir, { recursive: true, force: true }));
      const url = `file://${dir}/vol/`;
      const walArgs = wal ? ['--wal-url', `file://${dir}/wal/`] : [];
      if (mode === 'wal-at-flush') walArgs.push('--wal-ack', 'flush');
      const rand = rng({ none: 101, wal: 202, 'wal-at-flush': 303 }[mode]);
      // Per block: the newest write known durable, and every write ever made (numbers are global).
      const floor = new Map<number, number>();
      const everWritten = new Map<number, Set<number>>();
      let next = 0;
      let totalFlushes = 0;
      let server = await serve([url, '--create', '--size', `${BLOCKS * 4096}`, ...walArgs]);
      for (let trial = 0; trial < TRIALS / 2; trial++) {
        const args = [
          writerPy,
          server.uri,
          String(BLOCKS),
          String(trial + { none: 0, wal: 1000, 'wal-at-flush': 2000 }[mode]),
          '--start',
          String(next),
        ];
        args.push(
          '--flush-every',
          String(2 + Math.floor(rand() * 12)),
          '--fua-every',
          wal ? '5' : '0',
        );
        // Every other trial writes runs of up to 32 blocks (128 KiB) per request: segments
        // then store long runs straight from the write buffer's memory (gather writes).
        if (trial % 2 === 1) args.push('--run-max', '32');
        const writer = spawn('/usr/bin/python3', args, { stdio: ['ignore', 'pipe', 'pipe'] });
        let log = '';
        writer.stdout.setEncoding('utf8').on('data', (d: string) => (log += d));
        const writerDone = new Promise((resolve) => writer.once('exit', resolve));
        await new Promise((r) => setTimeout(r, 200 + rand() * 900));
        await stopServe(server, 'SIGKILL');
        await writerDone;
        const { writes, durable, flushes } = analyse(log);
        totalFlushes += flushes;
        for (const [blk, ns] of writes) {
          const set = everWritten.get(blk) ?? new Set<number>();
          for (const n of ns) set.add(n);
          everWritten.set(blk, set);
          next = Math.max(next, ...ns);
        }
        for (const [blk, n] of durable) floor.set(blk, n);
        // Restart and read everything back. The dead server's lease has not expired, but its
        // holder is a process of this machine that is gone: no --force needed.
        server = await serve([url, ...walArgs]);
        const img = join(dir, 'img');
        const copy = await run('nbdcopy', [server.uri, img]);
        assert.equal(copy.code, 0, copy.stderr);
        const bytes = await readFile(img);
        for (let blk = 0; blk < BLOCKS; blk++) {
          const chunk = bytes.subarray(blk * 4096, (blk + 1) * 4096);
          const want = floor.get(blk);
          if (chunk.every((x) => x === 0)) {
            assert.equal(
              want,
              undefined,
              `trial ${trial}: block ${blk} lost its acknowledged write ${want}`,
            );
            continue;
          }
          const n = Number(chunk.readBigUInt64LE(0));
          const b = Number(chunk.readBigUInt64LE(8));
          const pattern = Buffer.concat(Array.from({ length: 256 }, () => chunk.subarray(0, 16)));
          assert.ok(chunk.equals(pattern), `trial ${trial}: block ${blk} is torn`);
          assert.equal(b, blk, `trial ${trial}: block ${blk} holds block ${b}'s data`);
          assert.ok(
            everWritten.get(blk)?.has(n),
            `trial ${trial}: block ${blk} holds write ${n}, never made to it`,
          );
          if (want !== undefined) {
            assert.ok(
              n >= want,
              `trial ${trial}: block ${blk} went back from acknowledged write ${want} to ${n}`,
            );
          }
          // What was read back after the restart is durable from now on.
          floor.set(blk, n);
        }
      }
      await stopServe(server, 'SIGKILL');
      assert.ok(totalFlushes > TRIALS, `the writers acknowledged ${totalFlushes} flushes`);
    });
  }
});
