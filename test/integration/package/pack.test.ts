/**
 * The npm package: `npm pack` of the built checkout, installed with `npm install -g` into a
 * temporary prefix, must give a `hyper` that runs from there (its own node_modules, the oclif
 * manifest, no dev dependencies) and works on file:// volumes.
 *
 * `npm pack --ignore-scripts` packs the dist/ and oclif.manifest.json that `npm run build`
 * made (the prepack script would rebuild from scratch: the same output, a minute slower). The
 * install takes dependencies from the npm cache when it has them (`--prefer-offline`).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { repoRoot } from '../../helpers/cli.js';
import { needTools } from '../../helpers/env.js';
import { serve, stopServe } from '../../helpers/serve.js';

const run = promisify(execFile);

describe('npm package', () => {
  it('installs from the tarball with npm install -g and runs hyper from there', async (t) => {
    if (!needTools(t, 'npm')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-pack-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const pkg = JSON.parse(await readFile(join(repoRoot, 'package.json'), 'utf8')) as {
      version: string;
      engines: { node: string };
    };

    const packed = await run(
      'npm',
      ['pack', '--ignore-scripts', '--json', '--pack-destination', dir],
      { cwd: repoRoot, maxBuffer: 16 << 20 },
    );
    const [info] = JSON.parse(packed.stdout) as { filename: string; files: { path: string }[] }[];
    assert.ok(info);
    const files = info.files.map((f) => f.path);
    assert.ok(files.includes('oclif.manifest.json'), 'the manifest is packed');
    assert.ok(files.includes('bin/run.js'));
    assert.ok(files.includes('dist/commands/file/create.js'));
    assert.ok(files.includes('dist/commands/doctor.js'));
    assert.ok(!files.includes('bin/dev.js'), 'bin/dev.js needs tsx, a dev dependency');
    assert.ok(!files.some((f) => f.startsWith('src/') || f.startsWith('test/')));

    const prefix = join(dir, 'prefix');
    await run(
      'npm',
      [
        'install',
        '--global',
        '--prefix',
        prefix,
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        '--loglevel=error',
        join(dir, info.filename),
      ],
      { cwd: dir, maxBuffer: 16 << 20, timeout: 120_000 },
    );
    const bin = join(prefix, 'bin', 'hyper');
    const installed = join(prefix, 'lib', 'node_modules', 'hyper');
    assert.ok(existsSync(join(installed, 'oclif.manifest.json')));
    assert.ok(!existsSync(join(installed, 'node_modules', 'typescript')), 'no dev dependencies');

    // Outside the checkout, with a clean environment: nothing may come from the repository.
    const env = { PATH: process.env.PATH ?? '', HOME: dir, NO_COLOR: '1' };
    const version = await run(bin, ['--version'], { cwd: dir, env });
    assert.match(version.stdout, new RegExp(`^hyper/${pkg.version.replaceAll('.', '\\.')} `));
    assert.equal(version.stderr, '');

    const vol = `file://${join(dir, 'vols', 'demo')}/`;
    const created = await run(bin, ['file', 'create', vol, '--size', '64M', '--json'], {
      cwd: dir,
      env,
    });
    assert.equal((JSON.parse(created.stdout) as { size: number }).size, 64 << 20);
    const stat = await run(bin, ['file', 'stat', vol, '--json'], { cwd: dir, env });
    const st = JSON.parse(stat.stdout) as { size: number; checkpoint: number };
    assert.equal(st.size, 64 << 20);
    assert.equal(stat.stderr, '');

    // The installed command runs Node with the flags of bin/run.js's first line: `serve`'s
    // resident memory depends on the smaller young generation (README, "Memory"), its CPU
    // after a start on the larger interrupt budget (README, "Start-up CPU").
    const served = await serve([vol], { bin, cwd: dir, env, cleanEnv: true });
    t.after(() => stopServe(served, 'SIGKILL'));
    assert.match(served.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/demo$/);
    const argv = (await readFile(`/proc/${served.child.pid}/cmdline`, 'utf8')).split('\0');
    assert.ok(argv.includes('--max-semi-space-size=4'), `node runs as: ${argv.join(' ')}`);
    assert.ok(argv.includes('--interrupt-budget=540672'), `node runs as: ${argv.join(' ')}`);
    assert.equal(await stopServe(served), 0);

    // The Node version this runs on is one the package declares.
    const major = Number(process.versions.node.split('.')[0]);
    const min = /^>=(\d+)\.(\d+)/.exec(pkg.engines.node);
    assert.ok(min, `engines.node is a lower bound: ${pkg.engines.node}`);
    assert.ok(major >= Number(min[1]));
  });
});
