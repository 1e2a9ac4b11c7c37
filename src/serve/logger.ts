/**
 * Leveled log lines for serving: `2026-01-31T12:00:00.000Z info message {"field":…}`, one per
 * call. The sink is injected (the CLI writes to stderr, a test collects lines), so nothing in
 * the library prints on its own. The same logger goes to the engine and to the NBD server,
 * whose logger interfaces are the same four methods.
 */
import type { Logger } from '../format/volume/types.js';
import type { NbdLogger } from '../nbd/device.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Levels from the most to the least verbose. */
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

export type ServeLogger = Logger & NbdLogger;

export interface LineLoggerOptions {
  /** Lines below this level are dropped (default 'info'). */
  level?: LogLevel;
  /** Receives each line, newline included. */
  write: (line: string) => void;
  /** Clock for the timestamps (default: the current time). */
  now?: () => Date;
}

/** One log line: time, level, message and the fields as JSON when there are any. */
export function formatLogLine(
  time: Date,
  level: LogLevel,
  msg: string,
  fields?: Record<string, unknown>,
): string {
  const f =
    fields === undefined || Object.keys(fields).length === 0 ? '' : ` ${JSON.stringify(fields)}`;
  return `${time.toISOString()} ${level} ${msg}${f}\n`;
}

export function lineLogger(options: LineLoggerOptions): ServeLogger {
  const min = LOG_LEVELS.indexOf(options.level ?? 'info');
  const now = options.now ?? (() => new Date());
  const at = (level: LogLevel) =>
    LOG_LEVELS.indexOf(level) < min
      ? () => undefined
      : (msg: string, fields?: Record<string, unknown>): void =>
          options.write(formatLogLine(now(), level, msg, fields));
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}
