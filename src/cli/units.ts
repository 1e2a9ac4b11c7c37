/**
 * Parsers and formatters for the values people type on the command line: byte sizes,
 * durations and points in time. Pure functions (no oclif), so they are unit-tested directly
 * and reused by src/flags.ts. Every failure is a HyperError of kind `invalid` whose message
 * names the flag (when given) and lists the accepted forms. Plain regular expressions, not zod:
 * every command loads this module, and zod would add about 100 ms to each start.
 */
import { HyperError } from '../errors.js';

const UNITS = ['', 'K', 'M', 'G', 'T', 'P'] as const;
const BINARY_NAMES = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

export const SIZE_FORMS =
  'a whole number of bytes like 4096, 4K, 4KiB, 512KiB, 10G, 1.5G or 1TiB (K, M, G, T, P are powers of 1024)';
export const DURATION_FORMS =
  'a duration like 500ms, 30s, 5m, 2h, 7d or 1w, or a combination like 1h30m';
export const TIME_FORMS =
  'an ISO-8601 time like 2026-01-31T12:00:00Z (or 2026-01-31) or a duration ago like 30m, 2h, 7d';

export type SizeBounds = {
  /** Smallest accepted value in bytes (default 0). */
  min?: number;
  /** Largest accepted value in bytes (default Number.MAX_SAFE_INTEGER). */
  max?: number;
  /** The value must be a multiple of this. */
  multipleOf?: number;
  /** The value must be a power of two. */
  powerOfTwo?: boolean;
};

interface Named {
  /** How the value is called in messages, e.g. `--size`. */
  name?: string;
}

const bad = (name: string | undefined, input: string, forms: string, why?: string): HyperError =>
  new HyperError(
    'invalid',
    'INVALID_ARGUMENT',
    `Invalid value ${JSON.stringify(input)}${name ? ` for ${name}` : ''}${why ? `: ${why}` : ''}`,
    { suggestion: `Use ${forms}.` },
  );

const SIZE_RE = /^(\d+)(?:\.(\d+))?\s*(?:([kmgtp])(?:ib|b)?|b)?$/i;

/**
 * Parse a byte size: `4096`, `4K`, `4KiB`, `512KiB`, `10G`, `1TiB`, `1.5G` (a fraction is
 * accepted when the result is a whole number of bytes). K, M, G, T and P are powers of 1024;
 * `KB` means the same as `KiB`. Throws an `invalid` HyperError naming `name` otherwise.
 */
export function parseSize(input: string, options: SizeBounds & Named = {}): number {
  const { name } = options;
  const m = SIZE_RE.exec(input.trim());
  if (!m) throw bad(name, input, SIZE_FORMS);
  const whole = m[1] ?? '0';
  const frac = m[2] ?? '';
  const unit = (m[3] ?? '').toUpperCase();
  const exp = BigInt(UNITS.indexOf(unit as (typeof UNITS)[number]));
  const scale = 1024n ** exp;
  const den = 10n ** BigInt(frac.length);
  const num = BigInt(whole + frac) * scale;
  if (num % den !== 0n) throw bad(name, input, SIZE_FORMS, 'it is not a whole number of bytes');
  const bytes = num / den;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw bad(name, input, SIZE_FORMS, `it is larger than ${formatBytes(Number.MAX_SAFE_INTEGER)}`);
  }
  const value = Number(bytes);
  checkSizeBounds(value, input, options);
  return value;
}

function checkSizeBounds(value: number, input: string, options: SizeBounds & Named): void {
  const { name, min = 0, max = Number.MAX_SAFE_INTEGER, multipleOf, powerOfTwo } = options;
  const range = `between ${describeBytes(min)} and ${describeBytes(max)}`;
  if (value < min)
    throw bad(name, input, `${SIZE_FORMS}, ${range}`, `must be at least ${describeBytes(min)}`);
  if (value > max)
    throw bad(name, input, `${SIZE_FORMS}, ${range}`, `must be at most ${describeBytes(max)}`);
  if (powerOfTwo && !isPowerOfTwo(value)) {
    throw bad(
      name,
      input,
      `a power of two ${range}, e.g. 4K, 64K, 512K or 1M`,
      'must be a power of two',
    );
  }
  if (multipleOf !== undefined && multipleOf > 1 && value % multipleOf !== 0) {
    throw bad(
      name,
      input,
      `a multiple of ${describeBytes(multipleOf)}`,
      `must be a multiple of ${describeBytes(multipleOf)}`,
    );
  }
}

export function isPowerOfTwo(n: number): boolean {
  if (!Number.isSafeInteger(n) || n < 1) return false;
  // Bit tricks are 32-bit in JavaScript; use exact division instead.
  let v = n;
  while (v > 1) {
    if (v % 2 !== 0) return false;
    v /= 2;
  }
  return true;
}

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

const DURATION_RE = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$|^0$/;

export type DurationBounds = {
  /** Smallest accepted duration in milliseconds (default 0). */
  minMs?: number;
  /** Largest accepted duration in milliseconds. */
  maxMs?: number;
};

/** Parse a duration (`500ms`, `30s`, `5m`, `2h`, `7d`, `1w`, `1h30m`, or `0`) to milliseconds. */
export function parseDuration(input: string, options: DurationBounds & Named = {}): number {
  const { name, minMs = 0, maxMs = Number.MAX_SAFE_INTEGER } = options;
  const text = input.trim().toLowerCase();
  if (!DURATION_RE.test(text)) throw bad(name, input, DURATION_FORMS);
  let ms = 0;
  for (const part of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/g)) {
    ms += Number(part[1]) * (DURATION_UNITS[part[2] ?? ''] ?? Number.NaN);
  }
  ms = Math.round(ms);
  if (!Number.isSafeInteger(ms)) throw bad(name, input, DURATION_FORMS, 'it is too long');
  if (ms < minMs)
    throw bad(name, input, DURATION_FORMS, `must be at least ${formatDuration(minMs)}`);
  if (ms > maxMs)
    throw bad(name, input, DURATION_FORMS, `must be at most ${formatDuration(maxMs)}`);
  return ms;
}

const ISO_RE =
  /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/i;

/**
 * Parse a point in time: an ISO-8601 date or date-time (a date-time without an offset is
 * local time, a bare date is midnight UTC), or a duration meaning that long before `now`
 * (`2h`, `7d`, optionally followed by ` ago`).
 */
export function parseTime(input: string, options: Named & { now?: Date } = {}): Date {
  const { name, now = new Date() } = options;
  const text = input.trim();
  if (ISO_RE.test(text)) {
    const t = Date.parse(text.replace(' ', 'T'));
    const date = new Date(t);
    // Date.parse accepts 2026-02-31 by rolling over; refuse dates that do not round-trip.
    const ymd = text.slice(0, 10);
    if (Number.isNaN(t) || !sameCalendarDay(ymd, date, /^\d{4}-\d{2}-\d{2}$/.test(text))) {
      throw bad(name, input, TIME_FORMS, 'not a valid date');
    }
    return date;
  }
  const relative = text.replace(/\s+ago$/i, '');
  try {
    const ms = parseDuration(relative);
    return new Date(now.getTime() - ms);
  } catch {
    throw bad(name, input, TIME_FORMS);
  }
}

function sameCalendarDay(ymd: string, date: Date, utc: boolean): boolean {
  const [y, m, d] = ymd.split('-').map(Number);
  if (utc)
    return date.getUTCFullYear() === y && date.getUTCMonth() + 1 === m && date.getUTCDate() === d;
  // With a time part the offset may move the UTC day; check only month/day validity.
  if (m === undefined || d === undefined || y === undefined) return false;
  const probe = new Date(Date.UTC(y, m - 1, d));
  return probe.getUTCMonth() + 1 === m && probe.getUTCDate() === d;
}

/** `1.5 GiB`, `512 KiB`, `4 KiB`, `100 B` — at most two decimals, binary units. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  let v = Math.abs(bytes);
  let i = 0;
  while (v >= 1024 && i < BINARY_NAMES.length - 1) {
    v /= 1024;
    i++;
  }
  const text = i === 0 ? String(v) : v.toFixed(2).replace(/\.?0+$/, '');
  return `${bytes < 0 ? '-' : ''}${text} ${BINARY_NAMES[i]}`;
}

/** `4 KiB (4096)` when exact, for messages about limits. */
function describeBytes(bytes: number): string {
  const human = formatBytes(bytes);
  return human.endsWith(' B') ? human : `${human} (${bytes})`;
}

/** `1h30m`, `45s`, `250ms`. */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  const parts: string[] = [];
  let rest = ms;
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
    ['ms', 1],
  ] as const) {
    if (rest >= size) {
      const n = Math.floor(rest / size);
      parts.push(`${n}${unit}`);
      rest -= n * size;
    }
  }
  return parts.join('');
}
