/**
 * A small parser of the Prometheus text exposition format (version 0.0.4), for tests that
 * scrape /metrics: every sample with its labels, and the declared TYPE of each family. It is
 * strict on purpose: a line it cannot read is an error, so a malformed exposition fails the
 * test that scrapes it.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  /** Metric family → declared type (counter, gauge, histogram, summary, untyped). */
  types: Map<string, string>;
  help: Map<string, string>;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*/;

function parseValue(s: string, line: string): number {
  // As Prometheus reads them (Go's ParseFloat): Inf and NaN in any letter case.
  const l = s.toLowerCase();
  if (l === '+inf' || l === 'inf') return Infinity;
  if (l === '-inf') return -Infinity;
  if (l === 'nan') return NaN;
  const v = Number(s);
  if (s === '' || Number.isNaN(v)) throw new Error(`bad sample value in ${JSON.stringify(line)}`);
  return v;
}

function parseSample(line: string): Sample {
  const name = NAME.exec(line)?.[0];
  if (name === undefined) throw new Error(`bad metric name in ${JSON.stringify(line)}`);
  let rest = line.slice(name.length);
  const labels: Record<string, string> = {};
  if (rest.startsWith('{')) {
    rest = rest.slice(1);
    for (;;) {
      rest = rest.trimStart();
      if (rest.startsWith('}')) {
        rest = rest.slice(1);
        break;
      }
      const key = LABEL.exec(rest)?.[0];
      if (key === undefined || rest[key.length] !== '=' || rest[key.length + 1] !== '"')
        throw new Error(`bad label in ${JSON.stringify(line)}`);
      rest = rest.slice(key.length + 2);
      let value = '';
      for (let i = 0; ; i++) {
        const c = rest[i];
        if (c === undefined) throw new Error(`unterminated label value in ${JSON.stringify(line)}`);
        if (c === '"') {
          rest = rest.slice(i + 1);
          break;
        }
        if (c === '\\') {
          const n = rest[++i];
          value += n === 'n' ? '\n' : (n ?? '');
        } else value += c;
      }
      if (key in labels) throw new Error(`duplicate label ${key} in ${JSON.stringify(line)}`);
      labels[key] = value;
      rest = rest.trimStart();
      if (rest.startsWith(',')) rest = rest.slice(1);
      else if (!rest.startsWith('}')) throw new Error(`bad label list in ${JSON.stringify(line)}`);
    }
  }
  if (!rest.startsWith(' ')) throw new Error(`no value in ${JSON.stringify(line)}`);
  const [value, timestamp, extra] = rest.trim().split(/\s+/);
  if (extra !== undefined || (timestamp !== undefined && !/^-?\d+$/.test(timestamp)))
    throw new Error(`trailing text in ${JSON.stringify(line)}`);
  return { name, labels, value: parseValue(value ?? '', line) };
}

export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (m === null) continue; // a plain comment
      const [, kind, name, rest] = m;
      if (kind === 'TYPE') {
        if (!/^(counter|gauge|histogram|summary|untyped)$/.test(rest!))
          throw new Error(`bad TYPE line ${JSON.stringify(line)}`);
        if (types.has(name!)) throw new Error(`TYPE of ${name} declared twice`);
        types.set(name!, rest!);
      } else help.set(name!, rest!);
      continue;
    }
    samples.push(parseSample(line));
  }
  return { samples, types, help };
}

/** Samples named `name` whose labels include every one of `labels`. */
export function select(e: Exposition, name: string, labels: Record<string, string> = {}): Sample[] {
  return e.samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
}

/** Sum of the samples `select` picks (0 when there are none). */
export function total(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  return select(e, name, labels).reduce((a, s) => a + s.value, 0);
}

/** The one sample `select` picks; throws when there is none or more than one. */
export function value(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const s = select(e, name, labels);
  if (s.length !== 1)
    throw new Error(`${s.length} samples of ${name} ${JSON.stringify(labels)}, expected 1`);
  return s[0]!.value;
}

/** GET a URL's body as text (fails on a non-200 status). */
export async function scrape(url: string): Promise<Exposition> {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return parseExposition(await r.text());
}
