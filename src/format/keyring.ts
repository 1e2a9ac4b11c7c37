/**
 * The volume keys this process holds (FORMAT.md "Encryption"). A key is 32 bytes; a key file
 * holds it raw (32 bytes), as 64 hex digits or as base64 (surrounding white space ignored).
 * Volumes name their key by id (codec/seal.ts keyIdOf), never by the key itself; whatever
 * opens an encrypted volume's segments finds the key here by that id.
 *
 * The CLI loads the key named by --key-file or HYPER_KEY_FILE; library users call addKey.
 */
import { readFile } from 'node:fs/promises';
import { HyperError, toHyperError } from '../errors.js';
import type { HeadRecord } from './codec/head.js';
import { KEY_BYTES, Sealer, keyIdOf } from './codec/seal.js';

const keys = new Map<string, Buffer>();

/** Hold `key` for the volumes that use it; returns its id. */
export function addKey(key: Buffer): string {
  if (key.length !== KEY_BYTES)
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `A volume key is 32 bytes, not ${key.length}`,
    );
  const id = keyIdOf(key);
  keys.set(id, Buffer.from(key));
  return id;
}

/** Forget every key (tests). */
export function clearKeys(): void {
  keys.clear();
}

/** The key with this id, if held. */
export function keyById(id: string): Buffer | undefined {
  return keys.get(id);
}

/** Parse a key file's bytes: 32 raw bytes, 64 hex digits or base64 of 32 bytes. */
export function parseKey(bytes: Buffer, path: string): Buffer {
  if (bytes.length === KEY_BYTES) return Buffer.from(bytes);
  const text = bytes.toString('latin1').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/]{43}=?$/.test(text)) {
    const b = Buffer.from(text, 'base64');
    if (b.length === KEY_BYTES) return b;
  }
  throw new HyperError(
    'invalid',
    'INVALID_ARGUMENT',
    `Key file ${path} holds no 32-byte key (${bytes.length} bytes: expected 32 raw bytes, 64 hex digits or base64)`,
    { suggestion: 'Make a key with: head -c 32 /dev/urandom > volume.key && chmod 600 volume.key' },
  );
}

/** Read a key file and hold its key; returns the key id. */
export async function loadKeyFile(path: string): Promise<string> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw toHyperError(e);
  }
  return addKey(parseKey(bytes, path));
}

/**
 * The sealer for a volume with this head (undefined for volumes that are not encrypted):
 * KEY_REQUIRED when no key is held, WRONG_KEY when the keys held are others.
 */
export function sealerFor(url: string, head: HeadRecord): Sealer | undefined {
  const seal = head.seal;
  if (!seal) return undefined;
  const key = keys.get(seal.keyId);
  if (key) return new Sealer(key, seal, !!head.dedup);
  if (keys.size === 0) {
    throw new HyperError(
      'invalid',
      'KEY_REQUIRED',
      `Volume ${url} is encrypted (key ${seal.keyId}) and no key is loaded`,
      {
        suggestion:
          'Pass --key-file PATH or set HYPER_KEY_FILE to the key file the volume was created with.',
      },
    );
  }
  throw new HyperError(
    'invalid',
    'WRONG_KEY',
    `Volume ${url} is encrypted with key ${seal.keyId}, not with ${keys.size === 1 ? 'the key' : 'any of the keys'} loaded (${[...keys.keys()].join(', ')})`,
    { suggestion: 'Pass the key file the volume was created with (--key-file or HYPER_KEY_FILE).' },
  );
}
