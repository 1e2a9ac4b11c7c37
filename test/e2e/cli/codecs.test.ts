/**
 * Compressed and encrypted volumes through the real CLI: create with a key file, import and
 * export byte for byte, stat showing codecs and key id, deep check, and the errors a user
 * meets without the key, with another key or with a key file that holds no key.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileUrl, hyper, hyperJson, show } from '../../helpers/cli.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('hyper file with --compression and --encryption', () => {
  let dir = '';
  let vol = '';
  let keyFile = '';
  let otherKey = '';
  let image = Buffer.alloc(0);
  let imagePath = '';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hyper-cli-codecs-'));
    vol = `${fileUrl(join(dir, 'vols'))}secret/`;
    keyFile = join(dir, 'volume.key');
    await writeFile(keyFile, `${randomBytes(32).toString('hex')}\n`);
    otherKey = join(dir, 'other.key');
    await writeFile(otherKey, randomBytes(32));
    // Text that compresses, random bytes that do not, a hole between them.
    const text = Buffer.from('hyper stores blocks on object storage. '.repeat(60_000));
    image = Buffer.concat([text, Buffer.alloc(1 << 20), randomBytes(1 << 20)]);
    imagePath = join(dir, 'disk.img');
    await writeFile(imagePath, image);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('creates, imports, exports and checks an encrypted, compressed volume', async () => {
    const created = await hyperJson([
      'file',
      'create',
      vol,
      '--size',
      '8M',
      '--compression',
      'zstd',
      '--encryption',
      'aes-256-gcm',
      '--key-file',
      keyFile,
    ]);
    assert.equal(created.compression, 'zstd');
    assert.equal(created.encryption, 'aes-256-gcm');
    assert.match(String(created.keyId), /^[0-9a-f]{16}$/);
    assert.equal(created.formatVersion, 2);
    const env = { HYPER_KEY_FILE: keyFile };
    const imp = await hyper(['file', 'import', imagePath, vol], { env });
    assert.equal(imp.code, 0, show(imp));
    const out = join(dir, 'out.img');
    const exp = await hyper(['file', 'export', vol, out], { env });
    assert.equal(exp.code, 0, show(exp));
    assert.equal(sha256((await readFile(out)).subarray(0, image.length)), sha256(image));
    // Stat needs no key (it reads the head only) and shows codecs and key id.
    const st = await hyper(['file', 'stat', vol]);
    assert.equal(st.code, 0, show(st));
    assert.match(st.stdout, /Compression\s+│ zstd/);
    assert.match(
      st.stdout,
      new RegExp(`Encryption\\s+│ aes-256-gcm \\(key ${String(created.keyId)}\\)`),
    );
    const json = await hyperJson(['file', 'stat', vol]);
    // The text compressed: stored well below the 3.3 MiB written.
    assert.ok((json.storedBytes as number) < 1.6 * 2 ** 20, `stored ${String(json.storedBytes)}`);
    const chk = await hyperJson(['file', 'check', vol, '--deep'], 0, { env });
    assert.equal(chk.clean, true, JSON.stringify(chk));
  });

  it('without the key, with another key or a bad key file: a clear error, exit 2', async () => {
    const out = join(dir, 'never.img');
    const none = await hyper(['file', 'export', vol, out]);
    assert.equal(none.code, 2, show(none));
    assert.match(
      none.stderr,
      /^Error \[KEY_REQUIRED\]: Volume .*secret\/ is encrypted \(key [0-9a-f]{16}\)/m,
    );
    assert.match(none.stderr, /--key-file/);
    const wrong = await hyper(['file', 'export', vol, out, '--key-file', otherKey]);
    assert.equal(wrong.code, 2, show(wrong));
    assert.match(wrong.stderr, /^Error \[WRONG_KEY\]/m);
    // Several keys: the volume finds its own by id (flag repeated, or a list in the variable).
    const both = await hyper([
      'file',
      'export',
      vol,
      out,
      '--overwrite',
      '--key-file',
      otherKey,
      '--key-file',
      keyFile,
    ]);
    assert.equal(both.code, 0, show(both));
    const listed = await hyper(['file', 'check', vol], {
      env: { HYPER_KEY_FILE: `${otherKey}:${keyFile}` },
    });
    assert.equal(listed.code, 0, show(listed));
    const bad = join(dir, 'bad.key');
    await writeFile(bad, 'not a key\n');
    const badKey = await hyper(['file', 'export', vol, out, '--key-file', bad]);
    assert.equal(badKey.code, 2, show(badKey));
    assert.match(badKey.stderr, /holds no 32-byte key/);
    const missing = await hyper([
      'file',
      'create',
      `${vol}x/`,
      '--size',
      '1M',
      '--encryption',
      'aes-256-gcm',
    ]);
    assert.equal(missing.code, 2, show(missing));
    assert.match(missing.stderr, /KEY_REQUIRED/);
    const bogus = await hyper([
      'file',
      'create',
      `${vol}y/`,
      '--size',
      '1M',
      '--compression',
      'brotli',
    ]);
    assert.equal(bogus.code, 2, show(bogus));
  });
  it('--dedup stores a repeated megabyte once and reads it back where each copy was', async () => {
    const dd = `${fileUrl(join(dir, 'vols'))}dedup/`;
    const created = await hyperJson(['file', 'create', dd, '--size', '8M', '--dedup']);
    assert.equal(created.dedup, true);
    assert.equal(created.formatVersion, 2);
    const mib = randomBytes(1 << 20);
    const twice = Buffer.concat([mib, Buffer.alloc(1 << 20), mib, mib]);
    const path = join(dir, 'twice.img');
    await writeFile(path, twice);
    const imp = await hyper(['file', 'import', path, dd]);
    assert.equal(imp.code, 0, show(imp));
    const st = await hyperJson(['file', 'stat', dd]);
    assert.equal(st.mappedBlockCount, 768);
    assert.equal(st.distinctBlockCount, 256);
    // Three copies of a random megabyte: one stored, plus index nodes.
    assert.ok((st.storedBytes as number) < 1.2 * 2 ** 20, `stored ${String(st.storedBytes)}`);
    const text = await hyper(['file', 'stat', dd]);
    assert.match(
      text.stdout,
      /Deduplication\s+│ on \(256 distinct blocks indexed for 768 mapped\)/,
    );
    const out = join(dir, 'twice.out');
    const exp = await hyper(['file', 'export', dd, out]);
    assert.equal(exp.code, 0, show(exp));
    assert.equal(sha256((await readFile(out)).subarray(0, twice.length)), sha256(twice));
    const chk = await hyperJson(['file', 'check', dd, '--deep']);
    assert.equal(chk.clean, true, JSON.stringify(chk));
  });
});
