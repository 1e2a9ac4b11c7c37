/**
 * The daemon's state file: the exports it maps again after a restart. Read with zod (a
 * damaged file stops the start with a message rather than mapping half of it), written
 * atomically (a temporary file in the same directory, fsync, rename), so a crash leaves the
 * old or the new table, never a torn one.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';
import { HyperError, toHyperError } from '../errors.js';
import { readJsonFile } from '../json-file.js';
import { stateFile, type StateFile } from './schema.js';
import { makeDirs } from '../make-dirs.js';

export const EMPTY_STATE: StateFile = { version: 1, exports: [] };

/** The state in `path`; the empty state when there is no file yet. */
export async function loadState(path: string): Promise<StateFile> {
  const state = await readJsonFile(
    path,
    stateFile,
    (problem) =>
      new HyperError('invalid', 'INVALID_ARGUMENT', `Invalid state file ${path}: ${problem}`, {
        suggestion: `Fix or remove ${path} (it only lists the exports to map again at start).`,
      }),
    { missingOk: true },
  );
  return state ?? { version: 1, exports: [] };
}

/** Replace the state in `path` atomically (the directory is created if missing). */
export async function saveState(path: string, state: StateFile): Promise<void> {
  const dir = dirname(path);
  await makeDirs(dir, 0o700);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const f = await open(tmp, 'wx', 0o600);
    try {
      await f.writeFile(`${JSON.stringify(state, null, 2)}\n`);
      await f.sync();
    } finally {
      await f.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw toHyperError(e);
  }
  // The rename is durable once the directory is synced.
  const d = await open(dir, 'r').catch(() => undefined);
  await d?.sync().catch(() => undefined);
  await d?.close();
}
