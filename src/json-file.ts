/**
 * JSON files hyper reads from the user or from itself (the CLI config, the daemon's config
 * and state files): read, parsed and checked against a zod schema in one place, so each
 * problem is reported the same way — naming the file and the fields at fault.
 */
import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import { toHyperError, type HyperError } from './errors.js';

/** What zod found wrong, as one line naming each field (the first `max` problems). */
export function zodProblems(error: z.ZodError, max = 5): string {
  return error.issues
    .slice(0, max)
    .map((i) => `${i.path.length > 0 ? i.path.map(String).join('.') : '(top level)'}: ${i.message}`)
    .join('; ');
}

/**
 * The content of the JSON file `path`, checked against `schema`. A file that does not exist
 * is `undefined` when `missingOk`; any other read error is the usual system error (missing
 * directory, permission). Text that is not JSON, or does not match, is `invalid(problem)`.
 */
export async function readJsonFile<T>(
  path: string,
  /** The schema, or how to load it (only once the file exists). */
  schema: z.ZodType<T> | (() => Promise<z.ZodType<T>>),
  invalid: (problem: string) => HyperError,
  options: { missingOk?: boolean } = {},
): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (options.missingOk && (code === 'ENOENT' || code === 'ENOTDIR')) return undefined;
    throw toHyperError(e);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw invalid(`not valid JSON (${(e as Error).message})`);
  }
  const r = (typeof schema === 'function' ? await schema() : schema).safeParse(json);
  if (!r.success) throw invalid(zodProblems(r.error));
  return r.data;
}
