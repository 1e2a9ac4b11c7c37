/**
 * Leveled log lines for serving, one per call, in one of two formats:
 *
 *   text  `2026-01-31T12:00:00.000Z info message {"field":…}`  (fields as JSON, if any)
 *   json  `{"time":"2026-01-31T12:00:00.000Z","level":"info","msg":"message","field":…}`
 *
 * A JSON line is one object: `time`, `level`, `msg`, then the fields at the top level (a field
 * named like one of the first three is written with a leading underscore). Lines about an NBD
 * connection carry its correlation id as the field `conn`.
 *
 * The sink is injected (the CLI writes to stderr, a test collects lines), so nothing in the
 * library prints on its own. The same logger goes to the engine and to the NBD server, whose
 * logger interfaces are the same four methods.
 */
import type { Logger } from '../format/volume/types.js';
import type { NbdLogger } from '../nbd/device.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Levels from the most to the least verbose. */
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

export type LogFormat = 'text' | 'json';

export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];

export type ServeLogger = Logger & NbdLogger;

export interface LineLoggerOptions {
  /** Lines below this level are dropped (default 'info'). */
  level?: LogLevel;
  /** Default 'text'. */
  format?: LogFormat;
  /** Receives each line, newline included. */
  write: (line: string) => void;
  /** Clock for the timestamps (default: the current time). */
  now?: () => Date;
}

/** JSON for field values that JSON.stringify cannot take as they are. */
const replacer = (_key: string, value: unknown): unknown => {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) return value.message;
  return value;
};

/** One text log line: time, level, message and the fields as JSON when there are any. */
export function formatLogLine(
  time: Date,
  level: LogLevel,
  msg: string,
  fields?: Record<string, unknown>,
): string {
  const f =
    fields === undefined || Object.keys(fields).length === 0
      ? ''
      : ` ${JSON.stringify(fields, replacer)}`;
  return `${time.toISOString()} ${level} ${msg}${f}\n`;
}

const RESERVED = new Set(['time', 'level', 'msg']);

/** One JSON log line: an object with time, level, msg and the fields. */
export function formatJsonLogLine(
  time: Date,
  level: LogLevel,
  msg: string,
  fields?: Record<string, unknown>,
): string {
  const o: Record<string, unknown> = { time: time.toISOString(), level, msg };
  if (fields !== undefined) {
    const entries = Object.entries(fields);
    for (const [k, v] of entries) if (!RESERVED.has(k)) o[k] = v;
    for (const [k, v] of entries) {
      if (!RESERVED.has(k)) continue;
      let key = `_${k}`;
      while (key in o) key = `_${key}`;
      o[key] = v;
    }
  }
  return `${JSON.stringify(o, replacer)}\n`;
}

export function lineLogger(options: LineLoggerOptions): ServeLogger {
  const min = LOG_LEVELS.indexOf(options.level ?? 'info');
  const now = options.now ?? (() => new Date());
  const format = options.format === 'json' ? formatJsonLogLine : formatLogLine;
  const at = (level: LogLevel) =>
    LOG_LEVELS.indexOf(level) < min
      ? () => undefined
      : (msg: string, fields?: Record<string, unknown>): void =>
          options.write(format(now(), level, msg, fields));
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}
