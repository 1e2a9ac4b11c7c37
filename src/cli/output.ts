/**
 * How results and errors look (the README's "Conventions"): output formats, colour, tables
 * that fit the terminal, the error text and JSON, and "did you mean" suggestions. Pure
 * functions of their inputs (argv, environment, stream facts) so that the base command and
 * the command-not-found hook decide the same way.
 */
import Table from 'cli-table3';
import type { HyperError } from '../errors.js';
import type { ErrorJson } from './vocabulary.js';

/** `table`: boxes for people; `plain`: `key: value` lines and tab-separated rows; `json`. */
export type OutputFormat = 'table' | 'plain' | 'json';
export const OUTPUT_FORMATS: readonly OutputFormat[] = ['table', 'plain', 'json'];

/** The value of `--format` in argv (`--format X` or `--format=X`), if given. */
export function formatInArgv(argv: readonly string[]): string | undefined {
  let found: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a === '--format') found = argv[i + 1];
    else if (a.startsWith('--format=')) found = a.slice('--format='.length);
  }
  return found;
}

/** True when argv asks for JSON: `--json` or `--format json`. */
export function jsonInArgv(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  const args = end === -1 ? argv : argv.slice(0, end);
  return args.includes('--json') || formatInArgv(args) === 'json';
}

/** The default format: a table on a terminal, plain text otherwise. */
export function defaultFormat(stdoutIsTty: boolean | undefined): OutputFormat {
  return stdoutIsTty ? 'table' : 'plain';
}

/**
 * Whether to colour output written to a stream: only on a terminal, and never with
 * `--no-color`, a non-empty NO_COLOR, or TERM=dumb. FORCE_COLOR=0 also turns it off.
 */
export function colorEnabled(
  isTty: boolean | undefined,
  argv: readonly string[] = process.argv,
  env: NodeJS.ProcessEnv = process.env,
): boolean {
  if (argv.includes('--no-color')) return false;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  if (env.FORCE_COLOR === '0' || env.TERM === 'dumb') return false;
  return Boolean(isTty);
}

const SGR = { red: [31, 39], green: [32, 39], yellow: [33, 39], bold: [1, 22], dim: [2, 22] };
export type Style = keyof typeof SGR;

/** `text` in a style when `on`, else unchanged. */
export function paint(on: boolean, style: Style, text: string): string {
  if (!on) return text;
  const [a, b] = SGR[style];
  return `\u001b[${a}m${text}\u001b[${b}m`;
}

/** The JSON body of an error (vocabulary rule: absent is null). */
export function errorJson(err: HyperError, exitCode: number): ErrorJson {
  return {
    error: {
      kind: err.kind,
      code: err.code,
      message: err.message,
      suggestion: err.suggestion ?? null,
      key: err.key ?? null,
      exitCode,
    },
  };
}

/** `Error [CODE]: message` and `Suggestion: …` lines for stderr. */
export function errorText(err: HyperError, color: boolean): string {
  const lines = [`${paint(color, 'red', 'Error')} [${err.code}]: ${err.message}`];
  if (err.suggestion) lines.push(`Suggestion: ${err.suggestion}`);
  return lines.join('\n');
}

/** Levenshtein distance, for "did you mean". */
export function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/**
 * The candidates closest to `input`: those starting with it, or within an edit distance of
 * about a third of its length (at least 1, at most 3); best first, at most `max`.
 */
export function closest(input: string, candidates: Iterable<string>, max = 3): string[] {
  const limit = Math.min(3, Math.max(1, Math.floor(input.length / 3)));
  const scored: [string, number][] = [];
  for (const c of new Set(candidates)) {
    if (c === input) continue;
    const d = editDistance(input.toLowerCase(), c.toLowerCase());
    if (d <= limit) scored.push([c, d]);
    else if (input.length >= 2 && c.startsWith(input)) scored.push([c, limit + 0.5]);
  }
  scored.sort((x, y) => x[1] - y[1] || x[0].localeCompare(y[0]));
  return scored.slice(0, max).map(([c]) => c);
}

/** `Did you mean X?` / `Did you mean X or Y?`, or undefined without candidates. */
export function didYouMean(
  matches: string[],
  quote = (s: string): string => s,
): string | undefined {
  if (matches.length === 0) return undefined;
  const q = matches.map(quote);
  const list = q.length === 1 ? q[0] : `${q.slice(0, -1).join(', ')} or ${q.at(-1)}`;
  return `Did you mean ${list}?`;
}

// eslint-disable-next-line no-control-regex
const SGR_SEQUENCE = /\u001b\[[0-9;]*m/g;

const visibleLength = (s: string): number =>
  Math.max(
    ...s
      .replace(SGR_SEQUENCE, '')
      .split('\n')
      .map((l) => [...l].length),
  );

/**
 * Column widths (cli-table3 `colWidths`, padding included) that make a bordered table at most
 * `width` columns wide: the widest columns are narrowed first, none below 8 (or its natural
 * width).
 */
export function fitColumns(natural: number[], width: number): number[] {
  const widths = [...natural];
  const total = (): number => widths.reduce((s, w) => s + w, 0) + widths.length + 1;
  while (total() > width) {
    let widest = 0;
    for (let i = 1; i < widths.length; i++) if (widths[i]! > widths[widest]!) widest = i;
    if (widths[widest]! <= 8) break;
    widths[widest]!--;
  }
  return widths;
}

/** A bordered table (the `table` format) no wider than `width`; long cells wrap. */
export function boxTable(
  head: string[] | undefined,
  rows: string[][],
  width: number,
  color: boolean,
): string {
  const all = head ? [head, ...rows] : rows;
  const columns = Math.max(...all.map((r) => r.length));
  const natural = Array.from(
    { length: columns },
    (_, i) => Math.max(1, ...all.map((r) => visibleLength(r[i] ?? ''))) + 2,
  );
  const colWidths = fitColumns(natural, width);
  // Words longer than their column (URLs, object keys) are cut into lines of the column's width.
  const breakLong = (cell: string, i: number): string => {
    const w = Math.max(1, (colWidths[i] ?? 3) - 2);
    return cell
      .split('\n')
      .map((line) =>
        line
          .split(' ')
          .map((word) => ([...word].length <= w ? word : chunks(word, w).join('\n')))
          .join(' '),
      )
      .join('\n');
  };
  const t = new Table({
    ...(head ? { head: head.map((h) => paint(color, 'bold', h)) } : {}),
    colWidths,
    wordWrap: true,
    wrapOnWordBoundary: true,
    style: { head: [], border: [] },
  });
  t.push(...rows.map((r) => r.map(breakLong)));
  return t.toString();
}

function chunks(word: string, w: number): string[] {
  const chars = [...word];
  const out: string[] = [];
  for (let i = 0; i < chars.length; i += w) out.push(chars.slice(i, i + w).join(''));
  return out;
}

/** Rows of the `plain` format: a header line and one tab-separated line per row. */
export function plainTable(head: string[], rows: string[][]): string {
  const clean = (s: string): string => s.replace(/[\t\n]/g, ' ');
  return [head, ...rows].map((r) => r.map(clean).join('\t')).join('\n');
}

/** `label: value` lines (the `plain` format of a record). */
export function plainFields(rows: [string, string][]): string {
  return rows.map(([k, v]) => `${k}: ${v.replace(/\n/g, ' ')}`).join('\n');
}
