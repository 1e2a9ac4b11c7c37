/**
 * Parsing the checkpoint references people type for `--to`, `--at` and `--from`
 * (`hyper snapshot restore/create/diff`). Pure (no oclif), so it is unit-testable and every
 * command reads references the same way.
 *
 * A value is, in this order:
 *   - `checkpoint:N`, `snapshot:NAME` or `time:T`: explicit, never ambiguous;
 *   - a whole number (`42`): checkpoint 42;
 *   - an ISO-8601 time (`2026-01-31T12:00:00Z`) or a duration ago (`2h`, `30m`, `7d`): the
 *     last checkpoint at or before that time;
 *   - anything else: a named snapshot (`before-upgrade`).
 * A snapshot whose name looks like a number or a time (`42`, `2h`) is reached with
 * `snapshot:42`.
 */
import { HyperError } from '../errors.js';
import { SNAPSHOT_NAME } from '../format/keys.js';
import type { CheckpointRef } from '../format/volume/types.js';
import { TIME_FORMS, parseTime } from './units.js';

export const CHECKPOINT_REF_FORMS =
  'a checkpoint number (42), a snapshot name (before-upgrade), an ISO-8601 time (2026-01-31T12:00:00Z) or a duration ago (2h, 7d); prefix with checkpoint:, snapshot: or time: to be explicit';

const bad = (name: string | undefined, input: string, why: string, forms: string): HyperError =>
  new HyperError(
    'invalid',
    'INVALID_ARGUMENT',
    `Invalid value ${JSON.stringify(input)}${name ? ` for ${name}` : ''}: ${why}`,
    { suggestion: `Use ${forms}.` },
  );

function checkpointNumber(text: string, input: string, name: string | undefined): CheckpointRef {
  if (!/^\d+$/.test(text)) throw bad(name, input, 'not a checkpoint number', CHECKPOINT_REF_FORMS);
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw bad(name, input, 'checkpoint numbers start at 1', CHECKPOINT_REF_FORMS);
  }
  return { checkpoint: n };
}

function snapshotName(text: string, input: string, name: string | undefined): CheckpointRef {
  if (!SNAPSHOT_NAME.test(text)) {
    throw bad(
      name,
      input,
      'not a checkpoint number, a time, or a valid snapshot name',
      `${CHECKPOINT_REF_FORMS}. Snapshot names are 1-64 letters, digits, ".", "_" or "-", starting with a letter, digit or "_"`,
    );
  }
  return { snapshot: text };
}

/**
 * Parse a checkpoint reference. `name` (e.g. `--to`) is used in error messages; `now` is the
 * reference for durations ago (default: the current time).
 */
export function parseCheckpointRef(
  input: string,
  options: { name?: string; now?: Date } = {},
): CheckpointRef {
  const { name } = options;
  const text = input.trim();
  if (text === '') throw bad(name, input, 'it is empty', CHECKPOINT_REF_FORMS);
  const explicit = /^(checkpoint|snapshot|snap|time):(.*)$/i.exec(text);
  if (explicit) {
    const kind = (explicit[1] ?? '').toLowerCase();
    const rest = (explicit[2] ?? '').trim();
    if (kind === 'checkpoint') return checkpointNumber(rest, input, name);
    if (kind === 'time') {
      try {
        return { time: parseTime(rest, options.now ? { now: options.now } : {}) };
      } catch {
        throw bad(name, input, 'not a valid time', TIME_FORMS);
      }
    }
    return snapshotName(rest, input, name);
  }
  if (/^\d+$/.test(text)) return checkpointNumber(text, input, name);
  // A time: ISO-8601 or a duration ago. parseTime refuses anything else.
  if (/^\d/.test(text)) {
    try {
      return { time: parseTime(text, options.now ? { now: options.now } : {}) };
    } catch (e) {
      // An ISO-looking value that is not a real date (2026-02-31) is an error, not a name.
      if (/^\d{4}-\d{2}-\d{2}/.test(text)) throw e instanceof HyperError ? relabel(e, name) : e;
    }
  }
  return snapshotName(text, input, name);
}

function relabel(e: HyperError, name: string | undefined): HyperError {
  if (!name) return e;
  return new HyperError(
    e.kind,
    e.code,
    e.message.replace(/^(Invalid value "[^"]*")/, `$1 for ${name}`),
    {
      ...(e.suggestion === undefined ? {} : { suggestion: e.suggestion }),
      cause: e,
    },
  );
}

/** A reference for people: `checkpoint 42`, `snapshot "before-upgrade"`, `time 2026-…Z`. */
export function describeCheckpointRef(ref: CheckpointRef): string {
  if ('checkpoint' in ref) return `checkpoint ${ref.checkpoint}`;
  if ('snapshot' in ref) return `snapshot "${ref.snapshot}"`;
  return `the last checkpoint at or before ${ref.time.toISOString()}`;
}

/** The JSON form of a reference (times as ISO-8601). */
export type CheckpointRefJson = { checkpoint: number } | { snapshot: string } | { time: string };

export function checkpointRefJson(ref: CheckpointRef): CheckpointRefJson {
  if ('time' in ref) return { time: ref.time.toISOString() };
  return ref;
}
