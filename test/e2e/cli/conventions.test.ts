/**
 * Every command of hyper against the conventions of the README ("Conventions"): walks all the
 * commands oclif knows (so a new command is included without editing this file) and checks
 * that its --help has examples, that its --json output of a successful run matches its schema
 * in src/cli/vocabulary.ts, that a mistyped flag gives UNKNOWN_FLAG with a suggestion naming
 * one of its flags, that a missing volume gives VOLUME_NOT_FOUND, and that a volume whose lease
 * another process holds gives LEASE_HELD. A command missing from INVOCATIONS (or from
 * `resultSchemas`) fails: add it there. `serve` and `daemon` run until stopped (JSON Lines);
 * `map`, `unmap` and `ls` talk to one daemon started for this file.
 *
 * Also: unknown commands (did you mean), `hyper help`, `-h`, colour and NO_COLOR, plain output
 * when stdout is not a terminal, --format, --quiet, and tables within 80 columns.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Config } from '@oclif/core';
import type { z } from 'zod';
import {
  daemonListeningSchema,
  replicaServeListeningSchema,
  resultSchemas,
  serveListeningSchema,
  errorJsonSchema,
} from '../../../src/cli/vocabulary.js';
import { ControlClient } from '../../../src/daemon/control.js';
import { openStore } from '../../../src/format/store/index.js';
import { cloneVolume } from '../../../src/format/volume/clone.js';
import { createSnapshot } from '../../../src/format/volume/history.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { needTools, s3Config } from '../../helpers/env.js';
import { fileUrl, hyper, repoRoot, runJs, show, tempDir } from '../../helpers/cli.js';
import { startDaemon, type RunningDaemon } from '../../helpers/daemon.js';
import { inTurns } from '../../helpers/in-turns.js';

const MiB = 1024 * 1024;

/** A volume of 1 MiB with two checkpoints (data at 0, then at 64 KiB) and snapshot "snap1". */
async function makeVolume(url: string): Promise<void> {
  const store = await openStore(url);
  try {
    await Volume.create(store, { size: MiB });
    const v = await Volume.open(store);
    await v.write(0, Buffer.alloc(64 * 1024, 1));
    await v.flush();
    await createSnapshot(store, 'snap1');
    await v.write(64 * 1024, Buffer.alloc(64 * 1024, 2));
    await v.flush();
    await v.close();
  } finally {
    await store.close();
  }
}

async function makeClone(parentUrl: string, url: string): Promise<void> {
  const parent = await openStore(parentUrl);
  const child = await openStore(url);
  try {
    await cloneVolume(parent, { snapshot: 'snap1' }, child);
  } finally {
    await child.close();
    await parent.close();
  }
}

interface Fixture {
  dir: string;
  /** A fresh volume (see makeVolume) for this use. */
  volume(name: string): Promise<string>;
  /**
   * The same in the shared daemon's directory, for volumes that daemon serves: it keeps
   * writing to them (its lease) until it stops after the tests, so they must outlive the
   * test's own directory.
   */
  daemonVolume(name: string): Promise<string>;
  /** A fresh clone of a fresh volume. */
  clone(name: string): Promise<string>;
  /** A raw image of 256 KiB. */
  image: string;
  /** The control socket of the daemon that map, unmap and ls use (shared by all tests). */
  controlSocket: string;
}

interface Invocation {
  /** Arguments of a successful run with `url` (--json is added). */
  ok(f: Fixture): Promise<string[]>;
  /** Arguments with `url` a missing volume (VOLUME_NOT_FOUND), or null: not applicable. */
  missing: ((f: Fixture, url: string) => string[]) | null;
  /** Arguments for a volume whose lease is held (LEASE_HELD), or null: takes no lease. */
  leased: ((f: Fixture, url: string) => string[]) | null;
}

/** Export names unique across the tests (they share one daemon). */
let exportNumber = 0;
const exportName = (what: string): string => `${what}-${++exportNumber}`;

/** Map the volume at `url` in the shared daemon (through the control API, not the CLI). */
async function mapInDaemon(f: Fixture, url: string, name: string): Promise<void> {
  await new ControlClient(f.controlSocket).post('/v1/exports', { url, name });
}

/** A diff of a fresh volume from snap1, at <dir>/conventions.diff. */
async function diffOf(f: Fixture): Promise<string> {
  const path = join(f.dir, 'conventions.diff');
  const r = await hyper([
    'file',
    'export-diff',
    await f.volume(exportName('diff-source')),
    '--from',
    'snap1',
    path,
    '--overwrite',
  ]);
  assert.equal(r.code, 0, show(r));
  return path;
}

/** A freshly formatted replication primary (a new file) with its replica below <dir>. */
async function primaryOf(f: Fixture, name: string): Promise<{ file: string; uuid: string }> {
  const file = join(f.dir, `${name}.primary`);
  const r = await hyper([
    'replica',
    'format',
    '--file',
    file,
    '--device-size',
    '4M',
    '--region-size',
    '1M',
    '--replica',
    fileUrl(join(f.dir, 'replicas')),
  ]);
  assert.equal(r.code, 0, show(r));
  return { file, uuid: r.stdout.trim() };
}

/** One successful invocation per command id, and how it meets a missing or leased volume. */
const INVOCATIONS: Record<string, Invocation> = {
  'file:create': {
    ok: async (f) => [fileUrl(join(f.dir, 'new-create')), '--size', '1M'],
    missing: null,
    leased: null,
  },
  'file:create-opt': {
    ok: async (f) => [fileUrl(join(f.dir, 'new-opt')), '--data-block-size', '64K', '--size', '1M'],
    missing: null,
    leased: null,
  },
  'file:set-len': {
    ok: async (f) => [await f.volume('set-len'), '--size', '2M'],
    missing: (_f, url) => [url, '--size', '2M'],
    leased: (_f, url) => [url, '--size', '2M'],
  },
  'file:stat': {
    ok: async (f) => [await f.volume('stat'), '--space'],
    missing: (_f, url) => [url],
    leased: null,
  },
  'file:list': {
    ok: async (f) => [fileUrl(f.dir)],
    missing: null,
    leased: null,
  },
  'file:import': {
    ok: async (f) => [f.image, await f.volume('import')],
    missing: (f, url) => [f.image, url],
    leased: (f, url) => [f.image, url],
  },
  'file:export': {
    ok: async (f) => [await f.volume('export'), join(f.dir, 'export.img'), '--at', 'snap1'],
    missing: (f, url) => [url, join(f.dir, 'missing.img')],
    leased: null,
  },
  'file:copy': {
    ok: async (f) => [
      await f.volume('copy'),
      fileUrl(join(f.dir, 'copy-target')),
      '--at',
      'snap1',
      '--create',
    ],
    missing: (f, url) => [url, fileUrl(join(f.dir, 'copy-of-missing')), '--create'],
    // (A leased target: test/e2e/cli/copy.test.ts.)
    leased: null,
  },
  'file:compare': {
    ok: async (f) => [await f.volume('compare-a'), await f.volume('compare-b')],
    missing: (f, url) => [url, f.image],
    leased: null,
  },
  'file:delete': {
    ok: async (f) => [await f.volume('delete'), '--yes'],
    missing: (_f, url) => [url, '--yes'],
    leased: (_f, url) => [url, '--yes'],
  },
  'file:check': {
    ok: async (f) => [await f.volume('check'), '--deep'],
    missing: (_f, url) => [url],
    leased: null,
  },
  'file:repair': {
    ok: async (f) => [await f.volume('repair')],
    missing: (_f, url) => [url],
    leased: (_f, url) => [url, '--apply'],
  },
  'snapshot:list': {
    ok: async (f) => [await f.volume('snapshot-list')],
    missing: (_f, url) => [url],
    leased: null,
  },
  'snapshot:create': {
    ok: async (f) => [await f.volume('snapshot-create'), '--name', 'snap2', '--at', '1'],
    missing: (_f, url) => [url, '--name', 'x'],
    leased: null,
  },
  'snapshot:delete': {
    ok: async (f) => [await f.volume('snapshot-delete'), 'snap1'],
    missing: (_f, url) => [url, 'snap1'],
    leased: null,
  },
  'snapshot:unpin': {
    // A clone whose directory was removed by hand left its pin on the parent.
    ok: async (f) => {
      const clone = await f.clone('unpin');
      await rm(join(f.dir, 'unpin'), { recursive: true });
      return [fileUrl(join(f.dir, 'unpin-parent')), clone];
    },
    missing: (f, url) => [url, fileUrl(join(f.dir, 'no-clone'))],
    leased: null,
  },
  'snapshot:diff': {
    ok: async (f) => [await f.volume('snapshot-diff'), '--from', 'snap1'],
    missing: (_f, url) => [url, '--from', '1'],
    leased: null,
  },
  'snapshot:restore': {
    ok: async (f) => [await f.volume('snapshot-restore'), '--to', 'snap1'],
    missing: (_f, url) => [url, '--to', '1'],
    leased: (_f, url) => [url, '--to', 'snap1'],
  },
  'snapshot:clone': {
    ok: async (f) => [await f.volume('clone-parent'), fileUrl(join(f.dir, 'clone-child'))],
    missing: (f, url) => [url, fileUrl(join(f.dir, 'clone-of-missing'))],
    leased: null,
  },
  'snapshot:flatten': {
    ok: async (f) => [await f.clone('flatten')],
    missing: (_f, url) => [url],
    leased: null, // covered by the clone's own lease like set-len; the parent is not leased
  },
  compact: {
    ok: async (f) => [await f.volume('compact'), '--keep-last', '1', '--grace', '0s', '--yes'],
    missing: (_f, url) => [url, '--dry-run'],
    leased: (_f, url) => [url, '--keep-last', '1', '--yes'],
  },
  doctor: {
    // The one command that needs an S3 endpoint: the test RGW (scripts/test.sh starts it).
    ok: async () => {
      const s3 = s3Config();
      if (!s3) throw new Error('doctor needs HYPER_TEST_S3_ENDPOINT (the test RGW)');
      return [`s3://${s3.bucket}/conventions-doctor/`, '--endpoint', s3.endpoint, '--samples', '1'];
    },
    missing: null,
    leased: null,
  },
  'config:show': {
    ok: async () => [],
    missing: null,
    leased: null,
  },
  serve: {
    ok: async (f) => [await f.volume('serve'), '--port', '0'],
    missing: (_f, url) => [url, '--port', '0'],
    leased: (_f, url) => [url, '--port', '0'],
  },
  daemon: {
    // Its own control socket and state file; a config file maps one export at start.
    ok: async (f) => {
      const config = join(f.dir, 'daemon-config.json');
      const url = await f.volume('daemon-vol');
      await writeFile(config, JSON.stringify({ exports: [{ url, name: 'daemon-vol' }] }));
      return [
        '--control-socket',
        join(f.dir, 'daemon.sock'),
        '--state-file',
        join(f.dir, 'daemon-state.json'),
        '--config',
        config,
        '--port',
        '0',
      ];
    },
    missing: null,
    leased: null,
  },
  map: {
    ok: async (f) => {
      const name = exportName('map');
      return [await f.daemonVolume(name), '--name', name, '--control-socket', f.controlSocket];
    },
    missing: (f, url) => [
      url,
      '--name',
      exportName('missing'),
      '--control-socket',
      f.controlSocket,
    ],
    leased: (f, url) => [url, '--name', exportName('leased'), '--control-socket', f.controlSocket],
  },
  unmap: {
    ok: async (f) => {
      const name = exportName('unmap');
      await mapInDaemon(f, await f.daemonVolume(name), name);
      return [name, '--control-socket', f.controlSocket];
    },
    missing: null, // takes an export name, not a volume URL (EXPORT_NOT_FOUND)
    leased: null,
  },
  'file:export-diff': {
    ok: async (f) => [await f.volume('export-diff'), '--from', 'snap1', join(f.dir, 'export.diff')],
    missing: (f, url) => [url, '--from', '1', join(f.dir, 'missing.diff')],
    leased: null,
  },
  'file:import-diff': {
    ok: async (f) => [await diffOf(f), await f.volume('import-diff'), '--assume-base'],
    missing: (f, url) => [join(f.dir, 'conventions.diff'), url],
    leased: null, // needs a diff file: export-diff.test.ts covers LEASE_HELD
  },
  'replica:format': {
    ok: async (f) => [
      '--file',
      join(f.dir, `format-${++exportNumber}.primary`),
      '--device-size',
      '4M',
      '--region-size',
      '1M',
      '--replica',
      fileUrl(join(f.dir, 'replicas')),
    ],
    missing: null,
    leased: null,
  },
  'replica:serve': {
    ok: async (f) => {
      const p = await primaryOf(f, exportName('serve'));
      return ['--file', p.file, '--uuid', p.uuid, '--port', '0'];
    },
    missing: null,
    leased: null,
  },
  'replica:status': {
    ok: async (f) => ['--file', (await primaryOf(f, exportName('status'))).file],
    missing: null,
    leased: null,
  },
  'replica:resync': {
    ok: async (f) => ['--file', (await primaryOf(f, exportName('resync'))).file, '--full'],
    missing: null,
    leased: null,
  },
  'replica:check': {
    ok: async (f) => {
      const p = await primaryOf(f, exportName('check'));
      return ['--file', p.file, '--uuid', p.uuid];
    },
    missing: null,
    leased: null,
  },
  'replica:restore': {
    ok: async (f) => {
      const p = await primaryOf(f, exportName('restore'));
      return ['--file', p.file, '--uuid', p.uuid, '--to', '1'];
    },
    missing: (f, url) => [
      '--file',
      join(f.dir, `missing-${++exportNumber}.primary`),
      '--uuid',
      '00000000-0000-4000-8000-000000000000',
      '--replica',
      url,
      '--to',
      '1',
    ],
    leased: null,
  },
  ls: {
    ok: async (f) => {
      // At least one mapped export, so that its fields are checked too.
      const name = exportName('ls');
      await mapInDaemon(f, await f.daemonVolume(name), name);
      return ['--control-socket', f.controlSocket];
    },
    missing: null,
    leased: null,
  },
};

/** The daemon of map, unmap and ls: started on first use, stopped after the tests. */
let shared: { dir: string; daemon: Promise<RunningDaemon> } | undefined;
function sharedDaemon(): Promise<RunningDaemon> {
  if (shared === undefined) {
    const dir = join(tmpdir(), `hyper-conv-daemon-${process.pid}`);
    shared = {
      dir,
      daemon: mkdtemp(`${dir}-`).then((d) => {
        shared!.dir = d;
        return startDaemon(['--port', '0', '--state-file', join(d, 'state.json')], {
          controlSocket: join(d, 'control.sock'),
        });
      }),
    };
  }
  return shared.daemon;
}
after(async () => {
  if (shared === undefined) return;
  const d = await shared.daemon.catch(() => undefined);
  await d?.stop();
  await rm(shared.dir, { recursive: true, force: true });
});

/**
 * hyper's own commands (not those of the help and autocomplete plugins), each once: oclif
 * lists a command again under each of its aliases (`file info` for `file stat`).
 */
async function ownCommands(): Promise<Config['commands']> {
  const config = await Config.load(repoRoot);
  return config.commands.filter(
    (c) => c.pluginName === config.name && !c.hidden && !(c.aliases ?? []).includes(c.id),
  );
}

async function fixture(dir: string): Promise<Fixture> {
  await mkdir(dir, { recursive: true });
  const image = join(dir, 'image.raw');
  await writeFile(image, Buffer.alloc(256 * 1024, 7));
  const daemon = await sharedDaemon();
  const f: Fixture = {
    dir,
    image,
    controlSocket: daemon.controlSocket,
    async volume(name) {
      await mkdir(join(dir, name));
      const url = fileUrl(join(dir, name));
      await makeVolume(url);
      return url;
    },
    async daemonVolume(name) {
      const path = join(shared!.dir, name);
      await mkdir(path);
      const url = fileUrl(path);
      await makeVolume(url);
      return url;
    },
    async clone(name) {
      const parent = await f.volume(`${name}-parent`);
      await mkdir(join(dir, name));
      const url = fileUrl(join(dir, name));
      await makeClone(parent, url);
      return url;
    },
  };
  return f;
}

/** A flag name one letter off (`--size` → `--sizq`). */
const misspell = (name: string): string => `${name.slice(0, -1)}${name.endsWith('q') ? 'z' : 'q'}`;

/**
 * Run `hyper serve|daemon … --json` until it prints its `listening` line, stop it with
 * `signal`, return its stdout lines.
 */
function untilStopped(
  command: 'serve' | 'daemon' | 'replica:serve',
  args: string[],
  signal: NodeJS.Signals,
): Promise<{ code: number; lines: string[]; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [runJs, ...command.split(':'), ...args, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
    let out = '';
    let err = '';
    let signalled = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      // One signal only: a second one (on the "stopped" line) would hit a process that has
      // already put back the default handler, and kill it.
      if (!signalled && out.includes('"listening"') && out.endsWith('\n')) {
        signalled = true;
        child.kill(signal);
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, lines: out.split('\n').filter(Boolean), stderr: err });
    });
  });
}

function parseWith<T extends z.ZodType>(schema: T, text: string, what: string): z.infer<T> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    assert.fail(`${what}: stdout is not one JSON document:\n${text}`);
  }
  const r = schema.safeParse(json);
  assert.ok(r.success, `${what}: ${r.error?.message ?? ''}\n${text}`);
  return r.data as z.infer<T>;
}

describe('every command follows the conventions', () => {
  it('is in the invocation table and has a --json schema', async () => {
    const ids = (await ownCommands()).map((c) => c.id).sort();
    assert.ok(ids.length >= 18, `commands found: ${ids.join(', ')}`);
    for (const id of ids) {
      assert.ok(id in INVOCATIONS, `${id}: add it to INVOCATIONS in this file`);
      assert.ok(
        id in resultSchemas,
        `${id}: add its schema to resultSchemas (src/cli/vocabulary.ts)`,
      );
    }
  });

  it('--help shows examples; a mistyped flag names the right one', async (t) => {
    const commands = await ownCommands();
    const dir = await tempDir(t, 'hyper-conv-');
    const f = await fixture(dir);
    // Commands are checked a few at a time: each check is three runs of the CLI, and one at a
    // time they took over a minute of the suite.
    await inTurns(commands, 4, async (c) => {
      const words = c.id.split(':');
      const help = await hyper([...words, '--help']);
      assert.equal(help.code, 0, `${c.id} --help: ${show(help)}`);
      assert.match(help.stdout, /^EXAMPLES$/m, `${c.id} --help has examples`);
      assert.match(help.stdout, /\$ hyper /, `${c.id} examples`);

      const inv = INVOCATIONS[c.id];
      if (!inv) return; // reported by the test above
      const own = Object.keys(c.flags).filter((n) => !['json', 'help'].includes(n));
      const flag = own.find((n) => n.length >= 4) ?? 'region';
      const wrong = misspell(flag);
      const args = c.id === 'serve' ? [fileUrl(join(dir, 'nothing'))] : await inv.ok(f);
      const r = await hyper([...words, ...args, `--${wrong}`, 'x', '--json']);
      assert.equal(r.code, 2, `${c.id} --${wrong}: ${show(r)}`);
      const e = parseWith(errorJsonSchema, r.stdout, `${c.id} --${wrong}`);
      assert.equal(e.error.code, 'UNKNOWN_FLAG');
      assert.match(e.error.suggestion ?? '', new RegExp(`Did you mean --${flag}\\b`), c.id);
      const text = await hyper([...words, ...args, `--${wrong}`, 'x']);
      assert.equal(text.code, 2);
      assert.match(text.stderr, /^Error \[UNKNOWN_FLAG\]: /m, `${c.id}: ${show(text)}`);
      assert.match(text.stderr, new RegExp(`^Suggestion: Did you mean --${flag}\\b`, 'm'));
    });
  });

  it('--json output matches the schema of each command', async (t) => {
    const dir = await tempDir(t, 'hyper-conv-');
    const f = await fixture(dir);
    for (const c of await ownCommands()) {
      const inv = INVOCATIONS[c.id];
      const schema = (resultSchemas as Record<string, z.ZodType>)[c.id];
      if (!inv || !schema) continue; // reported by the first test
      const words = c.id.split(':');
      const args = await inv.ok(f);
      if (c.id === 'daemon') {
        const s = await untilStopped('daemon', args, 'SIGTERM');
        assert.equal(s.code, 0, `daemon: ${s.stderr}`);
        assert.equal(s.lines.length, 2, `daemon --json prints two lines: ${s.lines.join('\n')}`);
        const listening = parseWith(daemonListeningSchema, s.lines[0]!, 'daemon listening');
        assert.deepEqual(
          listening.exports.map((e) => [e.name, e.state, e.source]),
          [['daemon-vol', 'mapped', 'config']],
        );
        assert.match(listening.exports[0]!.uri ?? '', /^nbd:\/\/127\.0\.0\.1:\d+\/daemon-vol$/);
        const stopped = parseWith(schema, s.lines[1]!, 'daemon stopped') as { reason: string };
        assert.equal(stopped.reason, 'interrupted');
        continue;
      }
      if (c.id === 'replica:serve') {
        const s = await untilStopped('replica:serve', args, 'SIGINT');
        assert.equal(s.code, 0, `replica serve: ${s.stderr}`);
        assert.equal(
          s.lines.length,
          2,
          `replica serve --json prints two lines: ${s.lines.join('\n')}`,
        );
        const listening = parseWith(replicaServeListeningSchema, s.lines[0]!, 'replica listening');
        assert.match(listening.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/primary$/);
        parseWith(schema, s.lines[1]!, 'replica serve stopped');
        continue;
      }
      if (c.id === 'serve') {
        const s = await untilStopped('serve', args, 'SIGINT');
        assert.equal(s.code, 0, `serve: ${s.stderr}`);
        assert.equal(s.lines.length, 2, `serve --json prints two lines: ${s.lines.join('\n')}`);
        const listening = parseWith(serveListeningSchema, s.lines[0]!, 'serve listening');
        assert.match(listening.uris[0] ?? '', /^nbd:\/\/127\.0\.0\.1:\d+\/serve$/);
        parseWith(schema, s.lines[1]!, 'serve stopped');
        continue;
      }
      const r = await hyper([...words, ...args, '--json']);
      // doctor exits 7 when the bucket works with warnings (a slow run may warn on latency).
      const okCodes = c.id === 'doctor' ? [0, 7] : [0];
      assert.ok(okCodes.includes(r.code), `${c.id}: ${show(r)}`);
      parseWith(schema, r.stdout, c.id);
    }
  });

  it('a missing volume gives VOLUME_NOT_FOUND, a held lease LEASE_HELD', async (t) => {
    const dir = await tempDir(t, 'hyper-conv-');
    const f = await fixture(dir);
    // An existing, empty directory: no volume there.
    const missing = fileUrl(join(dir, 'empty'));
    await mkdir(join(dir, 'empty'));
    const leasedUrl = await f.volume('leased');
    const store = await openStore(leasedUrl);
    const writer = await Volume.open(store, { holder: 'test-writer', leaseTtlMs: 120_000 });
    try {
      for (const c of await ownCommands()) {
        const inv = INVOCATIONS[c.id];
        if (!inv) continue;
        const words = c.id.split(':');
        if (inv.missing) {
          const r = await hyper([...words, ...inv.missing(f, missing), '--json']);
          assert.equal(r.code, 3, `${c.id} on a missing volume: ${show(r)}`);
          const e = parseWith(errorJsonSchema, r.stdout, `${c.id} missing`);
          assert.equal(e.error.code, 'VOLUME_NOT_FOUND', c.id);
          assert.ok(e.error.suggestion, `${c.id}: VOLUME_NOT_FOUND has a suggestion`);
        }
        if (inv.leased) {
          const r = await hyper([...words, ...inv.leased(f, leasedUrl), '--json']);
          assert.equal(r.code, 4, `${c.id} on a leased volume: ${show(r)}`);
          const e = parseWith(errorJsonSchema, r.stdout, `${c.id} leased`);
          assert.equal(e.error.code, 'LEASE_HELD', c.id);
          assert.match(e.error.message, /test-writer/, `${c.id} names the holder`);
          assert.match(e.error.suggestion ?? '', /--force|--wait|stop/i, c.id);
        }
      }
    } finally {
      await writer.close();
      await store.close();
    }
  });
});

describe('unknown commands, help', () => {
  it('suggests the closest command, in text and in JSON', async () => {
    const r = await hyper(['file', 'creat', 'file:///tmp/x/']);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /^Error \[UNKNOWN_COMMAND\]: Unknown command "hyper file creat"$/m);
    assert.match(r.stderr, /^Suggestion: Did you mean "hyper file create"/m);
    const j = await hyper(['fle', 'create', '--json']);
    assert.equal(j.code, 2);
    const e = parseWith(errorJsonSchema, j.stdout, 'unknown command');
    assert.equal(e.error.code, 'UNKNOWN_COMMAND');
    assert.match(e.error.suggestion ?? '', /"hyper file create"/);
    const s = await hyper(['snapshot', 'lst']);
    assert.match(s.stderr, /Did you mean "hyper snapshot list"/);
  });

  it('a command given an argument it does not take, or missing one it needs, says which', async () => {
    // `hyper ls` lists the daemon's exports (rbd users type a pool after it).
    const ls = await hyper(['ls', 's3://bkt/vols/', '--json']);
    assert.equal(ls.code, 2, show(ls));
    const e = parseWith(errorJsonSchema, ls.stdout, 'ls with a URL');
    assert.equal(e.error.code, 'INVALID_ARGUMENT');
    assert.equal(e.error.message, 'Unexpected argument: s3://bkt/vols/');
    assert.match(e.error.suggestion ?? '', /"hyper file list s3:\/\/bkt\/vols\/"/);
    const d = await hyper(['daemon', 'extra']);
    assert.equal(d.code, 2, show(d));
    assert.match(d.stderr, /^Error \[INVALID_ARGUMENT\]: Unexpected argument: extra$/m);
    assert.match(d.stderr, /^Suggestion: Run "hyper daemon --help" for usage\.$/m);
    // A missing argument is named, without oclif's note on flags nobody gave.
    const c = await hyper(['compact']);
    assert.equal(c.code, 2, show(c));
    assert.match(
      c.stderr,
      /^Error \[INVALID_ARGUMENT\]: Missing the required argument URL \(Volume URL: /m,
    );
    assert.doesNotMatch(c.stderr, /multiple values|several values/);
    const k = await hyper(['compact', '--key-file', '/nonexistent/key']);
    assert.match(k.stderr, /--key-file takes several values: give the arguments before it/);
  });

  it('hyper help, hyper help <command>, -h', async () => {
    const root = await hyper(['help']);
    assert.equal(root.code, 0, show(root));
    assert.match(root.stdout, /^TOPICS$/m);
    assert.match(root.stdout, /^\s+file\s/m);
    const cmd = await hyper(['help', 'file', 'create']);
    assert.equal(cmd.code, 0, show(cmd));
    assert.match(cmd.stdout, /\$ hyper file create URL/);
    assert.match(cmd.stdout, /^EXAMPLES$/m);
    const short = await hyper(['file', 'create', '-h']);
    assert.equal(short.code, 0, show(short));
    assert.equal(short.stdout, cmd.stdout);
    const completion = await hyper(['autocomplete', 'script', 'bash']);
    assert.equal(completion.code, 0, show(completion));
    assert.match(completion.stdout, /HYPER_AC_BASH_SETUP_PATH/);
  });
});

describe('output formats', () => {
  it('plain key: value when not a terminal, --format table within 80 columns, json, --quiet', async (t) => {
    // A long path, so that the tables have to wrap to fit.
    const dir = join(
      await tempDir(t, 'hyper-conv-'),
      'a-rather-long-directory-name-to-make-the-url-wide',
    );
    const f = await fixture(dir);
    const url = await f.volume('volume-with-a-long-name-for-the-table-width-test');

    const noTerm = { env: { HYPER_FORMAT: '' } };
    const plain = await hyper(['file', 'stat', url], noTerm);
    assert.equal(plain.code, 0, show(plain));
    assert.match(plain.stdout, /^Size: 1 MiB \(1048576 bytes\)$/m);
    assert.doesNotMatch(plain.stdout, /[│┌─]/);
    const plainList = await hyper(['snapshot', 'list', url], noTerm);
    assert.match(plainList.stdout, /^Checkpoint\tTime\tName\tWritten\tNote$/m);

    for (const args of [
      ['file', 'stat', url, '--space'],
      ['file', 'list', fileUrl(dir)],
      ['snapshot', 'list', url],
      ['snapshot', 'diff', url, '--from', '1'],
      ['compact', url, '--dry-run'],
    ]) {
      const r = await hyper([...args, '--format', 'table']);
      assert.equal(r.code, 0, show(r));
      assert.match(r.stdout, /[│┌]/, `${args.join(' ')}: a table`);
      const widest = Math.max(...r.stdout.split('\n').map((l) => [...l].length));
      assert.ok(widest <= 80, `${args.slice(0, 2).join(' ')}: ${widest} columns\n${r.stdout}`);
    }

    const j = await hyper(['file', 'stat', url, '--format', 'json']);
    parseWith(resultSchemas['file:stat'], j.stdout, '--format json');

    const q = await hyper(['file', 'stat', url, '--quiet']);
    assert.equal(q.code, 0);
    assert.equal(q.stdout, '');
    assert.equal(q.stderr, '');
    const qe = await hyper(['file', 'stat', fileUrl(join(dir, 'nope')), '-q']);
    assert.notEqual(qe.code, 0);
    assert.match(qe.stderr, /^Error \[/m, 'errors still print with --quiet');
  });

  it('colours errors on a terminal, not with NO_COLOR or --no-color', async (t) => {
    if (!needTools(t, 'script')) return;
    const missing = fileUrl(join(await tempDir(t, 'hyper-conv-'), 'nope'));
    const red = '\u001b[31m';
    const coloured = await onTerminal(['file', 'stat', missing], {});
    assert.ok(
      coloured.includes(`${red}Error`),
      `coloured on a terminal: ${JSON.stringify(coloured)}`,
    );
    const noColorEnv = await onTerminal(['file', 'stat', missing], { NO_COLOR: '1' });
    assert.match(noColorEnv, /Error \[/);
    assert.ok(!noColorEnv.includes('\u001b['), `NO_COLOR: ${JSON.stringify(noColorEnv)}`);
    const noColorFlag = await onTerminal(['file', 'stat', missing, '--no-color'], {});
    assert.match(noColorFlag, /Error \[/);
    assert.ok(!noColorFlag.includes('\u001b['), `--no-color: ${JSON.stringify(noColorFlag)}`);
  });
});

/** Output of `hyper …args` on a pseudo-terminal (util-linux `script`). */
function onTerminal(args: string[], env: Record<string, string>): Promise<string> {
  const quoted = [process.execPath, runJs, ...args]
    .map((a) => `'${a.replaceAll("'", "'\\''")}'`)
    .join(' ');
  const childEnv: NodeJS.ProcessEnv = { ...process.env, TERM: 'xterm', ...env };
  delete childEnv.FORCE_COLOR;
  if (!('NO_COLOR' in env)) delete childEnv.NO_COLOR;
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qec', `stty cols 100 rows 30; ${quoted}`, '/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: childEnv,
    });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', () => {
      clearTimeout(timer);
      resolve(output);
    });
    child.stdin.end();
  });
}
