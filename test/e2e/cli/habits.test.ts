/**
 * Habits of the ecosystem: command aliases (`file info|ls|rm|resize`), relative sizes,
 * `file create` without --size refused, one argument shape for snapshot names, the
 * configuration file (`HYPER_CONFIG`, profiles, default flags, precedence flag > env > file,
 * `hyper config show`), and `--profile` choosing AWS credentials on a real S3 store.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer as createNetServer, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import {
  fileUrl,
  hyper,
  hyperJson,
  runJs,
  show,
  tempDir,
  type CliResult,
} from '../../helpers/cli.js';
import { needPrerequisite, needS3 } from '../../helpers/env.js';

const MiB = 1024 * 1024;

interface ErrorOut {
  error: { kind: string; code: string; message: string; suggestion?: string; exitCode: number };
}

describe('command aliases and argument shapes', () => {
  it('answers file info, ls, rm and resize like stat, list, delete and set-len', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'v'));
    await hyperJson(['file', 'create', url, '--size', '1M']);
    const info = await hyperJson<{ size: number }>(['file', 'info', url]);
    assert.equal(info.size, MiB);
    const ls = await hyperJson<{ volumes: { name: string }[] }>(['file', 'ls', fileUrl(dir)]);
    assert.deepEqual(
      ls.volumes.map((v) => v.name),
      ['v/'],
    );
    const resized = await hyperJson<{ size: number }>(['file', 'resize', url, '--size', '2M']);
    assert.equal(resized.size, 2 * MiB);
    const help = await hyper(['file', 'info', '--help']);
    assert.equal(help.code, 0, show(help));
    assert.match(help.stdout, /ALIASES[\s\S]*file info/);
    await hyperJson(['file', 'rm', url, '--yes']);
    const gone = await hyperJson<ErrorOut>(['file', 'stat', url], 3);
    assert.equal(gone.error.code, 'VOLUME_NOT_FOUND');
  });

  it('grows by +SIZE, shrinks by -SIZE only with --allow-shrink', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'v'));
    await hyperJson(['file', 'create', url, '--size', '1M']);
    const grown = await hyperJson<{ previousSize: number; size: number }>([
      'file',
      'set-len',
      url,
      '--size',
      '+1G',
    ]);
    assert.deepEqual([grown.previousSize, grown.size], [MiB, 1024 * MiB + MiB]);
    const refused = await hyperJson<ErrorOut>(['file', 'set-len', url, '--size=-1G'], 2);
    assert.match(refused.error.message, /Refusing to shrink .* without --allow-shrink/);
    assert.equal((await hyperJson<{ size: number }>(['file', 'stat', url])).size, 1025 * MiB);
    const shrunk = await hyperJson<{ size: number }>([
      'file',
      'set-len',
      url,
      '--size=-1G',
      '--allow-shrink',
    ]);
    assert.equal(shrunk.size, MiB);
    const below = await hyperJson<ErrorOut>(
      ['file', 'set-len', url, '--size=-2M', '--allow-shrink'],
      2,
    );
    assert.equal(below.error.code, 'OUT_OF_RANGE');
    assert.equal((await hyperJson<{ size: number }>(['file', 'stat', url])).size, MiB);
  });

  it('refuses file create and create-opt without --size, with an example', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'v'));
    for (const cmd of [['create'], ['create-opt', '--data-block-size', '64K']]) {
      const r = await hyper(['file', ...cmd, url]);
      assert.equal(r.code, 2, show(r));
      assert.match(r.stderr, /^Error \[INVALID_ARGUMENT\]: Missing required flag --size/m);
      assert.match(r.stderr, /Suggestion: .*--size 10G/);
    }
    const none = await hyperJson<ErrorOut>(['file', 'stat', url], 3);
    assert.equal(none.error.code, 'VOLUME_NOT_FOUND');
    const zero = await hyperJson<{ size: number }>(['file', 'create', url, '--size', '0']);
    assert.equal(zero.size, 0);
  });

  it('takes snapshot names as the argument of create and delete; --name still works', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'v'));
    await hyperJson(['file', 'create', url, '--size', '1M']);
    const a = await hyperJson<{ name: string }>(['snapshot', 'create', url, 'a']);
    assert.equal(a.name, 'a');
    const old = await hyper(['snapshot', 'create', url, '--name', 'b']);
    assert.equal(old.code, 0, show(old));
    assert.match(old.stderr, /second argument/);
    const both = await hyperJson<ErrorOut>(['snapshot', 'create', url, 'c', '--name', 'd'], 2);
    assert.match(both.error.message, /Two snapshot names/);
    const missing = await hyperJson<ErrorOut>(['snapshot', 'create', url], 2);
    assert.match(missing.error.suggestion ?? '', /snapshot create .* NAME/);
    const exists = async (name: string): Promise<number> =>
      (await hyper(['snapshot', 'restore', url, '--to', `snapshot:${name}`, '--dry-run'])).code;
    assert.deepEqual([await exists('a'), await exists('b'), await exists('c')], [0, 0, 3]);
    await hyperJson(['snapshot', 'delete', url, 'a']);
    await hyperJson(['snapshot', 'delete', url, '--name', 'b']);
    assert.deepEqual([await exists('a'), await exists('b')], [3, 3]);
  });

  it('refuses snapshot names that --at would read as a checkpoint or a time', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'v'));
    await hyperJson(['file', 'create', url, '--size', '1M']);
    for (const [name, what] of [
      ['42', 'a checkpoint number'],
      ['2h', 'a time'],
      ['2026-01-31', 'a time'],
    ] as const) {
      const r = await hyperJson<ErrorOut>(['snapshot', 'create', url, name], 2);
      assert.equal(r.error.code, 'INVALID_ARGUMENT');
      assert.ok(r.error.message.includes(what), r.error.message);
      assert.ok(r.error.suggestion?.includes(`"v${name}"`), r.error.suggestion);
    }
    const ok = await hyperJson<{ name: string }>(['snapshot', 'create', url, 'v42']);
    assert.equal(ok.name, 'v42');
  });

  it('answers VOLUME_NOT_FOUND at once for a file:// volume whose directory does not exist', async (t) => {
    const dir = await tempDir(t);
    const url = fileUrl(join(dir, 'missing', 'v'));
    for (const args of [
      ['file', 'stat', url],
      ['file', 'check', url],
      ['file', 'export', url, join(dir, 'x.img')],
      ['file', 'delete', url, '--yes'],
      ['snapshot', 'list', url],
      ['snapshot', 'create', url, 'x'],
      ['compact', url],
      ['file', 'set-len', url, '--size', '1M'],
    ]) {
      const r = await hyperJson<ErrorOut>(args, 3);
      assert.equal(r.error.code, 'VOLUME_NOT_FOUND', args.join(' '));
      assert.match(r.error.suggestion ?? '', /hyper file create .* --size/);
    }
    const ifExists = await hyper(['file', 'delete', url, '--yes', '--if-exists']);
    assert.equal(ifExists.code, 0, show(ifExists));
  });
});

describe('configuration file', () => {
  it('applies default flags with flag > env > profile > file precedence, shown by config show', async (t) => {
    const dir = await tempDir(t);
    const cfg = join(dir, 'config.json');
    await writeFile(
      cfg,
      JSON.stringify({
        profile: 'lab',
        region: 'eu-west-1',
        endpoint: 'http://127.0.0.1:1',
        payloadSigning: 'on',
        profiles: {
          lab: {
            endpoint: 'http://127.0.0.1:7480',
            payloadSigning: 'off',
            defaults: { compact: { grace: '0s' } },
          },
        },
        defaults: { compact: { grace: '1h', 'min-live': '0.5' }, 'file create': { size: '2M' } },
      }),
    );
    const env = { HYPER_CONFIG: cfg };
    type Shown = {
      configFile: string;
      profile: { value: string; source: string };
      endpoint: { value: string; source: string; from: string };
      region: { value: string; source: string; from: string };
      payloadSigning: { value: string; source: string; from: string | null };
      awsProfile: { value: string | null };
    };
    const shown = await hyperJson<Shown>(['config', 'show'], 0, { env });
    assert.equal(shown.configFile, cfg);
    assert.deepEqual([shown.profile.value, shown.profile.source], ['lab', 'file']);
    assert.deepEqual(
      [shown.endpoint.value, shown.endpoint.source],
      ['http://127.0.0.1:7480', 'profile'],
    );
    assert.equal(shown.endpoint.from, `${cfg}: profiles.lab.endpoint`);
    assert.deepEqual([shown.region.value, shown.region.source], ['eu-west-1', 'file']);
    assert.deepEqual([shown.payloadSigning.value, shown.payloadSigning.source], ['off', 'profile']);
    // A profile that is a section of the file does not imply an AWS profile.
    assert.equal(shown.awsProfile.value, null);

    const envWins = await hyperJson<Shown>(['config', 'show'], 0, {
      env: { ...env, AWS_REGION: 'ap-south-1', AWS_ENDPOINT_URL: 'http://10.0.0.1:9000' },
    });
    assert.deepEqual([envWins.region.value, envWins.region.source], ['ap-south-1', 'env']);
    const signEnv = await hyperJson<Shown>(['config', 'show'], 0, {
      env: { ...env, HYPER_S3_PAYLOAD_SIGNING: 'auto' },
    });
    assert.deepEqual(
      [signEnv.payloadSigning.value, signEnv.payloadSigning.from],
      ['auto', 'HYPER_S3_PAYLOAD_SIGNING'],
    );
    const badSign = await hyperJson<ErrorOut>(['config', 'show'], 2, {
      env: { ...env, HYPER_S3_PAYLOAD_SIGNING: 'maybe' },
    });
    assert.equal(badSign.error.code, 'INVALID_ARGUMENT');
    assert.match(badSign.error.message, /HYPER_S3_PAYLOAD_SIGNING: expected auto, on, off/);
    await writeFile(join(dir, 'empty.json'), '{}');
    const noFile = await hyperJson<Shown>(['config', 'show'], 0, {
      env: { HYPER_CONFIG: join(dir, 'empty.json') },
    });
    assert.deepEqual(
      [noFile.payloadSigning.value, noFile.payloadSigning.source],
      ['auto', 'default'],
    );
    assert.deepEqual(
      [envWins.endpoint.value, envWins.endpoint.from],
      ['http://10.0.0.1:9000', 'AWS_ENDPOINT_URL'],
    );
    const flagWins = await hyperJson<Shown>(
      ['config', 'show', '--region', 'r1', '--endpoint', 'http://h:2'],
      0,
      { env: { ...env, AWS_REGION: 'ap-south-1' } },
    );
    assert.deepEqual([flagWins.region.value, flagWins.region.source], ['r1', 'flag']);
    assert.deepEqual([flagWins.endpoint.value, flagWins.endpoint.source], ['http://h:2', 'flag']);
    // --profile naming no section: an AWS profile, top-level settings apply.
    const aws = await hyperJson<Shown>(['config', 'show', '--profile', 'prod'], 0, { env });
    assert.equal(aws.awsProfile.value, 'prod');
    assert.deepEqual([aws.payloadSigning.value, aws.payloadSigning.source], ['on', 'file']);
    assert.deepEqual([aws.endpoint.value, aws.endpoint.source], ['http://127.0.0.1:1', 'file']);
    const text = await hyper(['config', 'show'], { env });
    assert.match(
      text.stdout,
      /^endpoint: http:\/\/127\.0\.0\.1:7480 {2}\[profile \(.*profiles\.lab\.endpoint\)\]$/m,
    );
    assert.match(text.stdout, /^default: hyper compact --grace=1h/m);

    // Default flags: file create gets --size from the file, the command line wins.
    const url = fileUrl(join(dir, 'v'));
    const created = await hyperJson<{ size: number }>(['file', 'create', url], 0, { env });
    assert.equal(created.size, 2 * MiB);
    const url2 = fileUrl(join(dir, 'w'));
    const given = await hyperJson<{ size: number }>(['file', 'create', url2, '-s', '4M'], 0, {
      env,
    });
    assert.equal(given.size, 4 * MiB);
    // compact: the profile's grace (0s) overrides the file's (1h); min-live from the file.
    const c = await hyperJson<{ graceSeconds: number; minLive: number }>(['compact', url], 0, {
      env,
    });
    assert.deepEqual([c.graceSeconds, c.minLive], [0, 0.5]);
    const c2 = await hyperJson<{ graceSeconds: number }>(['compact', url, '--grace', '5m'], 0, {
      env,
    });
    assert.equal(c2.graceSeconds, 300);
    // Without the profile section (another profile), the file's own default applies.
    const c3 = await hyperJson<{ graceSeconds: number }>(
      ['compact', url, '--profile', 'other'],
      0,
      {
        env,
      },
    );
    assert.equal(c3.graceSeconds, 3600);
  });

  it('refuses an invalid configuration file, naming the file and the problem (exit 2)', async (t) => {
    const dir = await tempDir(t);
    const cfg = join(dir, 'config.json');
    const url = fileUrl(join(dir, 'v'));
    await hyperJson(['file', 'create', url, '--size', '1M']);
    const cases: [string, RegExp][] = [
      ['{ "endpoint": ', /not valid JSON/],
      ['{ "endpoint": "localhost:7480" }', /endpoint: expected http\(s\):\/\/host/],
      ['{ "regoin": "x" }', /regoin/],
      ['{ "payloadSigning": "sometimes" }', /payloadSigning/],
      ['{ "idleTimeout": "soon" }', /"soon" for .*: idleTimeout/],
      [
        '{ "profile": "p", "profiles": { "p": { "connectTimeout": "10ms" } } }',
        /profiles\.p\.connectTimeout.*at least 100ms/,
      ],
      ['{ "maxAttempts": 0 }', /maxAttempts/],
      ['{ "maxAttempts": "3" }', /maxAttempts/],
      ['{ "defaults": { "file stat": { "bogus": 1 } } }', /"hyper file stat" has no flag --bogus/],
      ['{ "defaults": { "file stat": { "endpoint": "http://x:1" } } }', /store setting/],
    ];
    for (const [text, why] of cases) {
      await writeFile(cfg, text);
      const r = await hyperJson<ErrorOut>(['file', 'stat', url], 2, { env: { HYPER_CONFIG: cfg } });
      assert.equal(r.error.code, 'INVALID_CONFIG', text);
      assert.ok(r.error.message.includes(cfg), r.error.message);
      assert.match(r.error.message, why);
    }
    const missing = await hyperJson<ErrorOut>(['file', 'stat', url], 2, {
      env: { HYPER_CONFIG: join(dir, 'nope.json') },
    });
    assert.match(missing.error.message, /no such file \(named by HYPER_CONFIG\)/);
    // "*" defaults apply only where the flag exists.
    await writeFile(cfg, JSON.stringify({ defaults: { '*': { yes: true } } }));
    const star = await hyper(['file', 'delete', url], { env: { HYPER_CONFIG: cfg } });
    assert.equal(star.code, 0, show(star));
  });
});

describe('another user', () => {
  it('passes over a default configuration file it may not read, with a note; refuses one HYPER_CONFIG names; a port below 1024 is about ports', async (t) => {
    if (!needPrerequisite(t, process.getuid?.() === 0, 'needs root (runs hyper as nobody)')) return;
    const dir = await tempDir(t);
    await chmod(dir, 0o755);
    const url = fileUrl(join(dir, 'v'));
    await hyperJson(['file', 'create', url, '--size', '1M']);
    // Root's configuration, as `sudo -u nobody` or a service without its own HOME finds it.
    const home = join(dir, 'home');
    await mkdir(join(home, '.config', 'hyper'), { recursive: true });
    await chmod(home, 0o700);
    const cfg = join(home, '.config', 'hyper', 'config.json');
    await writeFile(cfg, '{ "region": "eu-west-1" }', { mode: 0o600 });
    // The checkout may sit where nobody cannot reach it (under /root): it is bind-mounted,
    // read-only, on a directory of its own in /tmp (never under a directory a test removes
    // with its content), and unmounted before that directory goes.
    const repo = await mkdtemp(join(tmpdir(), 'hyper-repo-'));
    await chmod(repo, 0o755);
    const bound = spawnSync('mount', ['--bind', '-o', 'ro', dirname(dirname(runJs)), repo]);
    assert.equal(bound.status, 0, String(bound.stderr));
    t.after(async () => {
      assert.equal(spawnSync('umount', [repo]).status, 0, `umount ${repo}`);
      await rmdir(repo);
    });
    const asNobody = (args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> =>
      new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [join(repo, 'bin', 'run.js'), ...args], {
          cwd: dir,
          uid: 65534,
          gid: 65534,
          env: { PATH: process.env.PATH ?? '', HOME: home, NO_COLOR: '1', ...env },
        });
        let stdout = '';
        let stderr = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
        child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
      });
    const passed = await asNobody(['file', 'stat', url, '--format', 'plain'], {});
    assert.equal(passed.code, 0, show(passed));
    assert.match(passed.stdout, /Size: 1 MiB/);
    assert.match(passed.stderr, /config\.json is not readable by this user .*going on without it/);
    assert.doesNotMatch(passed.stderr, /EACCES|Warning/, 'no warning of oclif about its data dir');
    const json = await asNobody(['file', 'stat', url, '--json'], {
      XDG_CONFIG_HOME: join(dir, 'cfg'),
    });
    assert.equal(json.code, 0, show(json));
    assert.equal(json.stderr, '', '--json keeps stderr for errors');
    const named = await asNobody(['file', 'stat', url, '--json'], { HYPER_CONFIG: cfg });
    assert.equal(named.code, 2, show(named));
    const e = (JSON.parse(named.stdout) as ErrorOut).error;
    assert.equal(e.code, 'PERMISSION_DENIED');
    assert.match(e.message, /Cannot read the configuration file .*config\.json: permission denied/);
    assert.match(e.suggestion ?? '', /readable by this user/);
    const low = await asNobody(['serve', url, '--read-only', '--port', '80', '--json'], {});
    assert.equal(low.code, 2, show(low));
    assert.match(
      (JSON.parse(low.stdout) as ErrorOut).error.suggestion ?? '',
      /below 1024 need root/,
    );
  });
});

describe('store timeouts and attempts', () => {
  type Shown = Record<
    'connectTimeout' | 'idleTimeout' | 'maxAttempts',
    { value: string; source: string; from: string | null }
  >;
  const pick = (s: Shown): string[][] =>
    (['connectTimeout', 'idleTimeout', 'maxAttempts'] as const).map((k) => [
      s[k].value,
      s[k].source,
    ]);

  it('come from env > profile > file > default, shown by config show; bad values refused', async (t) => {
    const dir = await tempDir(t);
    const cfg = join(dir, 'config.json');
    await writeFile(
      cfg,
      JSON.stringify({
        idleTimeout: '2m',
        maxAttempts: 3,
        profiles: { slow: { idleTimeout: '5m', connectTimeout: '20s' } },
      }),
    );
    await writeFile(join(dir, 'empty.json'), '{}');
    const none = await hyperJson<Shown>(['config', 'show'], 0, {
      env: { HYPER_CONFIG: join(dir, 'empty.json') },
    });
    assert.deepEqual(pick(none), [
      ['5s', 'default'],
      ['1m', 'default'],
      ['6', 'default'],
    ]);
    const file = await hyperJson<Shown>(['config', 'show'], 0, { env: { HYPER_CONFIG: cfg } });
    assert.deepEqual(pick(file), [
      ['5s', 'default'],
      ['2m', 'file'],
      ['3', 'file'],
    ]);
    assert.equal(file.idleTimeout.from, `${cfg}: idleTimeout`);
    const profile = await hyperJson<Shown>(['config', 'show', '--profile', 'slow'], 0, {
      env: { HYPER_CONFIG: cfg },
    });
    assert.deepEqual(pick(profile), [
      ['20s', 'profile'],
      ['5m', 'profile'],
      ['3', 'file'],
    ]);
    const env = await hyperJson<Shown>(['config', 'show', '--profile', 'slow'], 0, {
      env: {
        HYPER_CONFIG: cfg,
        HYPER_S3_CONNECT_TIMEOUT: '750ms',
        HYPER_S3_IDLE_TIMEOUT: '10s',
        HYPER_S3_MAX_ATTEMPTS: '1',
      },
    });
    assert.deepEqual(pick(env), [
      ['750ms', 'env'],
      ['10s', 'env'],
      ['1', 'env'],
    ]);
    assert.equal(env.idleTimeout.from, 'HYPER_S3_IDLE_TIMEOUT');
    const text = await hyper(['config', 'show'], { env: { HYPER_CONFIG: cfg } });
    assert.match(text.stdout, /^idle timeout: 2m {2}\[file \(.*: idleTimeout\)\]$/m);
    assert.match(text.stdout, /^max attempts: 3 {2}\[file/m);

    for (const [name, value, why] of [
      ['HYPER_S3_IDLE_TIMEOUT', 'forever', /"forever" for HYPER_S3_IDLE_TIMEOUT$/],
      ['HYPER_S3_IDLE_TIMEOUT', '2h', /at most 1h/],
      ['HYPER_S3_CONNECT_TIMEOUT', '0', /at least 100ms/],
      ['HYPER_S3_MAX_ATTEMPTS', '0', /whole number from 1 to 20/],
      ['HYPER_S3_MAX_ATTEMPTS', '2.5', /whole number from 1 to 20/],
    ] as const) {
      const r = await hyperJson<ErrorOut>(['config', 'show'], 2, {
        env: { HYPER_CONFIG: cfg, [name]: value },
      });
      assert.equal(r.error.code, 'INVALID_ARGUMENT', `${name}=${value}`);
      assert.match(r.error.message, why);
    }
  });

  it(
    'bound how long a command waits on a store that never answers',
    { timeout: 60_000 },
    async (t) => {
      // A TCP server that reads requests and never answers: a store that took the request and
      // went silent (a Ceph cluster with a full OSD pauses writes that way).
      const sockets = new Set<Socket>();
      let requests = 0;
      const silent = createNetServer((sock) => {
        sockets.add(sock);
        sock.on('data', (d) => {
          if (/^(GET|PUT|HEAD|POST|DELETE) /.test(d.toString('latin1'))) requests++;
        });
        sock.on('error', () => undefined);
        sock.on('close', () => sockets.delete(sock));
      });
      await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
      t.after(async () => {
        for (const s of sockets) s.destroy();
        await new Promise<void>((r) => silent.close(() => r()));
      });
      const endpoint = `http://127.0.0.1:${(silent.address() as { port: number }).port}`;
      const env = {
        AWS_ACCESS_KEY_ID: 'k',
        AWS_SECRET_ACCESS_KEY: 's',
        HYPER_S3_IDLE_TIMEOUT: '500ms',
      };
      for (const attempts of [1, 2]) {
        requests = 0;
        const t0 = Date.now();
        const r = await hyperJson<ErrorOut>(
          ['file', 'stat', 's3://silent-bucket/v/', '--endpoint', endpoint],
          5,
          { env: { ...env, HYPER_S3_MAX_ATTEMPTS: String(attempts) } },
        );
        const ms = Date.now() - t0;
        assert.equal(r.error.code, 'STORE_UNAVAILABLE');
        assert.match(r.error.message, /silent too long/);
        // One request per attempt, each given up after the idle timeout (and the CLI's start-up).
        assert.equal(requests, attempts, `requests with ${attempts} attempt(s)`);
        assert.ok(ms >= attempts * 500 && ms < 15_000, `gave up after ${ms} ms`);
      }
    },
  );
});

describe('--profile on S3', () => {
  it('uses the AWS shared-credentials profile a hyper profile names', async (t) => {
    const s3 = needS3(t);
    if (!s3) return;
    const dir = await tempDir(t);
    const creds = join(dir, 'credentials');
    await writeFile(
      creds,
      `[good]\naws_access_key_id = ${s3.accessKeyId}\naws_secret_access_key = ${s3.secretAccessKey}\n` +
        `[bad]\naws_access_key_id = NOPE\naws_secret_access_key = nope\n`,
    );
    await writeFile(join(dir, 'aws-config'), '');
    const cfg = join(dir, 'config.json');
    await writeFile(
      cfg,
      JSON.stringify({
        profiles: { rgw: { endpoint: s3.endpoint, region: s3.region, awsProfile: 'good' } },
      }),
    );
    const env = {
      HYPER_CONFIG: cfg,
      AWS_SHARED_CREDENTIALS_FILE: creds,
      AWS_CONFIG_FILE: join(dir, 'aws-config'),
      AWS_ACCESS_KEY_ID: '',
      AWS_SECRET_ACCESS_KEY: '',
    };
    const url = `s3://${s3.bucket}/profile-${randomUUID()}/v/`;
    const created = await hyper(['file', 'create', url, '--size', '1M', '--profile', 'rgw'], {
      env,
    });
    assert.equal(created.code, 0, show(created));
    assert.equal(created.stderr, '');
    const stat = await hyperJson<{ size: number }>(['file', 'stat', url], 0, {
      env: { ...env, HYPER_PROFILE: 'rgw' },
    });
    assert.equal(stat.size, MiB);
    // An AWS profile named directly (no section of the file): its credentials are used.
    const denied = await hyperJson<ErrorOut>(
      ['file', 'stat', url, '--profile', 'bad', '--endpoint', s3.endpoint],
      5,
      { env },
    );
    assert.equal(denied.error.code, 'ACCESS_DENIED');
    const ok = await hyperJson<{ size: number }>(
      ['file', 'stat', url, '--profile', 'good', '--endpoint', s3.endpoint],
      0,
      { env },
    );
    assert.equal(ok.size, MiB);
    await hyperJson(['file', 'delete', url, '--yes', '--profile', 'rgw'], 0, { env });
  });
});
