/**
 * The base of every hyper command: the shared store flags, `--json`, opening the store for a
 * URL argument, spinners and tables for people, SIGINT/SIGTERM as an AbortSignal, and the one
 * place where errors become messages and exit codes (see `exitCodeFor`).
 *
 * Subclasses declare `static args`/`flags`, read `this.args`/`this.flags`, and return a typed
 * result from `run()`; with `--json` oclif prints that result, otherwise the command renders
 * it with `this.log`. Progress and spinners go to stderr, results to stdout.
 */
import { stat } from 'node:fs/promises';
import { createInterface } from 'node:readline/promises';
import { Command, Errors, Flags as OclifFlags, type Interfaces } from '@oclif/core';
import {
  OUTPUT_FORMATS,
  boxTable,
  closest,
  colorEnabled,
  defaultFormat,
  didYouMean,
  errorJson,
  errorText,
  formatInArgv,
  jsonInArgv,
  paint,
  plainFields,
  plainTable,
  type OutputFormat,
  type Style,
} from './cli/output.js';
import type { ErrorJson } from './cli/vocabulary.js';
import { HyperError, isHyperError, toHyperError } from './errors.js';
import {
  argvWithDefaults,
  attemptsOf,
  defaultFlagsFor,
  loadConfig,
  resolveSettings,
  timeoutMs,
  type DefaultFlag,
  type FlagShape,
  type LoadedConfig,
  type ResolvedSettings,
} from './cli/config.js';
import { originalFlagMessage, storeFlags } from './flags.js';
import type { Cipher } from './format/codec/seal.js';
import { keyById, loadKeyFile } from './format/keyring.js';
import { parsePayloadSigning } from './format/store/common.js';
import { storeTuningOf, type StoreTuning } from './format/store/types.js';
import { ProgressReporter } from './cli/progress.js';
import { startSpinner, type Spinner } from './cli/spinner.js';
import {
  openStore as openStoreAt,
  setDefaultStoreOptions,
  parseStoreUrl,
  type ObjectStore,
  type OpenStoreOptions,
} from './format/store/index.js';
import { makeDirs } from './make-dirs.js';

export type Flags<T extends typeof Command> = Interfaces.InferredFlags<
  (typeof BaseCommand)['baseFlags'] & T['flags']
>;
export type Args<T extends typeof Command> = Interfaces.InferredArgs<T['args']>;

/**
 * Exit code of an interrupted command (128 + SIGINT), whatever signal stopped it; also of a
 * confirmation answered "no" (`Aborted.`): the user stopped it, nothing was changed.
 */
export const EXIT_INTERRUPTED = 130;

/** Exit code when the reader of stdout went away (128 + SIGPIPE, as for `cat | head`). */
export const EXIT_READER_GONE = 141;

/**
 * A write to a pipe whose reader has gone (EPIPE), as it reaches the command: not a
 * HyperError (a store's EPIPE is one, STORE_UNAVAILABLE, and reported as such).
 */
function readerGone(err: unknown): boolean {
  return !(err instanceof HyperError) && (err as NodeJS.ErrnoException).code === 'EPIPE';
}

/**
 * The exit code for an error — the only place it is decided (the README documents the table):
 * 0 ok, 1 internal, 2 invalid usage/flags/arguments, 3 not found, 4 conflict,
 * 5 store unavailable, 6 damaged or missing data, 130 interrupted.
 */
export function exitCodeFor(err: HyperError): number {
  if (err.code === 'ABORTED') return EXIT_INTERRUPTED;
  switch (err.kind) {
    case 'invalid':
      return 2;
    case 'not-found':
      return 3;
    case 'conflict':
      return 4;
    case 'unavailable':
      return 5;
    case 'data':
      return 6;
    case 'internal':
      return 1;
  }
}

/** The JSON printed on stdout for a failure in `--json` mode (see src/cli/vocabulary.ts). */
export type { ErrorJson };

/**
 * Flags every command takes besides the store flags: how the result is shown. `--json` is
 * oclif's (enableJsonFlag); `--format json` means the same.
 */
export const outputFlags = {
  format: OclifFlags.string({
    summary:
      'Output format (default: table on a terminal, plain otherwise; json = --json). Env: HYPER_FORMAT.',
    options: [...OUTPUT_FORMATS],
    env: 'HYPER_FORMAT',
    helpGroup: 'OUTPUT',
  }),
  quiet: OclifFlags.boolean({
    char: 'q',
    summary: 'Print no result, progress or notes; only errors (and --json output).',
    helpGroup: 'OUTPUT',
  }),
  color: OclifFlags.boolean({
    summary: 'Colour output on a terminal (--no-color, or NO_COLOR=1, turns it off).',
    allowNo: true,
    default: true,
    helpGroup: 'OUTPUT',
  }),
};

/** A progress line on stderr; a no-op when stderr is not a terminal or in --json mode. */
export type { Spinner };

export abstract class BaseCommand<T extends typeof Command> extends Command {
  static override enableJsonFlag = true;
  static override baseFlags = { ...storeFlags, ...outputFlags };
  /**
   * True for a command whose --json output is JSON Lines (several documents, one per line,
   * written by the command itself): an error is then printed on one line too.
   */
  static jsonLines = false;

  protected flags!: Flags<T>;
  protected args!: Args<T>;

  /** The configuration file, the resolved store settings and the default flags applied. */
  protected hyperConfig!: {
    loaded: LoadedConfig;
    settings: ResolvedSettings;
    defaults: DefaultFlag[];
  };

  private stores: ObjectStore[] = [];
  private spinners: Spinner[] = [];
  private abortController?: AbortController;
  private signalHandler?: (signal: NodeJS.Signals) => void;

  public override async init(): Promise<void> {
    await super.init();
    // hyper supports Node 20 on purpose; the AWS SDK's notice about its future Node 22
    // requirement would otherwise be printed on stderr by every S3 command.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const ctor = this.ctor as typeof BaseCommand;
    // The configuration file: store settings and default flags (flag > env > file).
    const loaded = await loadConfig();
    const settings = resolveSettings(loaded, { ...profileInArgv(this.argv) });
    const allFlags = { ...(super.ctor as typeof BaseCommand).baseFlags, ...ctor.flags };
    const shapes: Record<string, FlagShape> = {};
    for (const [name, f] of Object.entries(allFlags)) {
      const def = f as {
        type: 'boolean' | 'option';
        char?: string;
        aliases?: string[];
        allowNo?: boolean;
      };
      shapes[name] = {
        type: def.type,
        ...(def.char === undefined ? {} : { char: def.char }),
        ...(def.aliases === undefined ? {} : { aliases: def.aliases }),
        ...(def.allowNo === undefined ? {} : { allowNo: def.allowNo }),
      };
    }
    if (ctor.enableJsonFlag) shapes.json = { type: 'boolean' };
    const id = this.id ?? ctor.id ?? '';
    const defaults = defaultFlagsFor(loaded, settings, id, ctor.aliases ?? []);
    const withDefaults = argvWithDefaults(this.argv, defaults, shapes, id, loaded.path);
    const { args, flags } = await this.parse(
      {
        flags: ctor.flags,
        baseFlags: (super.ctor as typeof BaseCommand).baseFlags,
        enableJsonFlag: ctor.enableJsonFlag,
        args: ctor.args,
        strict: ctor.strict,
      },
      withDefaults.argv,
    );
    this.flags = flags as Flags<T>;
    const given = flags as { endpoint?: string; region?: string; profile?: string };
    this.hyperConfig = {
      loaded,
      settings: resolveSettings(loaded, {
        ...(given.endpoint === undefined ? {} : { endpoint: given.endpoint }),
        ...(given.region === undefined ? {} : { region: given.region }),
        ...(given.profile === undefined ? {} : { profile: given.profile }),
      }),
      defaults: withDefaults.applied,
    };
    if (loaded.unreadable)
      this.note(
        `Note: ${loaded.path} is not readable by this user (${loaded.unreadable}): going on without it. Set HOME to this user's home, or HYPER_CONFIG to a file it may read.`,
      );
    // Stores the volumes name (a clone's parent, a WAL) open with the same settings.
    setDefaultStoreOptions(this.storeOptions());
    this.args = args as Args<T>;
    // The key of encrypted volumes (flag > env), held for every volume this command opens.
    // Several keys (a daemon serving volumes of several keys): the flag repeated, or paths
    // separated by ':' in the variable. A new volume gets the first.
    const keyFiles =
      (flags as { 'key-file'?: string[] })['key-file'] ??
      (process.env.HYPER_KEY_FILE ?? '').split(':').filter((p) => p !== '');
    for (const path of keyFiles) {
      const id = await loadKeyFile(path);
      this.keyId ??= id;
    }
  }

  /** The id of the (first) key loaded from --key-file / HYPER_KEY_FILE, if any. */
  protected keyId: string | undefined;

  /** Create options for --encryption (the key loaded from --key-file / HYPER_KEY_FILE). */
  protected encryptionOptions(cipher: string): { encryption?: Cipher; key?: Buffer } {
    if (cipher === 'none') return {};
    const key = this.volumeKey;
    return { encryption: cipher as Cipher, ...(key ? { key } : {}) };
  }

  /** The key loaded from --key-file / HYPER_KEY_FILE (for creating an encrypted volume). */
  protected get volumeKey(): Buffer | undefined {
    return this.keyId === undefined ? undefined : keyById(this.keyId);
  }

  /**
   * Open the store rooted at `url` with the --endpoint/--region flags; closed when the command
   * ends. With `mkdir` (commands that create a volume) a file:// directory is created first.
   * Otherwise a file:// directory that does not exist is no volume: VOLUME_NOT_FOUND at once
   * (creating the directory would not help), unless `prefix` (a listing: BUCKET_NOT_FOUND).
   */
  protected async openStore(
    url: string,
    options: { mkdir?: boolean; prefix?: boolean; with?: OpenStoreOptions } = {},
  ): Promise<ObjectStore> {
    const parsed = parseStoreUrl(url);
    if (parsed.scheme === 'file') {
      if (options.mkdir) await makeDirs(parsed.dir);
      else if (!options.prefix && !(await isDirectory(parsed.dir))) {
        throw new HyperError('not-found', 'VOLUME_NOT_FOUND', `No volume at ${parsed.url}`, {
          suggestion: `Create it with \`hyper file create ${parsed.url} --size SIZE\` (the directory ${parsed.dir} does not exist yet), or check the URL.`,
        });
      }
    }
    const store = await openStoreAt(url, options.with ?? this.storeOptions());
    this.stores.push(store);
    return store;
  }

  /** The options openStore opens stores with (what a worker thread needs to open its own). */
  protected storeOptions(): OpenStoreOptions {
    return storeOptionsOf(this.hyperConfig.settings);
  }

  /** How stores are reached (payload signing, timeouts, attempts), for library calls. */
  protected storeTuning(): StoreTuning {
    return storeTuningOf(this.storeOptions());
  }

  /**
   * Options for a second store a command reaches somewhere else (`file copy`'s target, `file
   * compare`'s second volume), from its own flags and the configuration file only: the
   * environment's endpoint and region are the first store's. Undefined when none is given:
   * the second store is reached like the first.
   */
  protected otherStoreOptions(prefix: string): OpenStoreOptions | undefined {
    const all = this.flags as Record<string, unknown>;
    const flags: { endpoint?: string; region?: string; profile?: string } = {};
    for (const key of ['endpoint', 'region', 'profile'] as const) {
      const v = all[`${prefix}-${key}`];
      if (typeof v === 'string') flags[key] = v;
    }
    if (Object.keys(flags).length === 0) return undefined;
    try {
      // The environment's HYPER_S3_* settings (signing, timeouts, attempts) apply to both.
      const env = Object.fromEntries(
        Object.entries(process.env).filter(([k]) => k.startsWith('HYPER_S3_')),
      );
      return storeOptionsOf(resolveSettings(this.hyperConfig.loaded, flags, env));
    } catch (e) {
      // (A bad value is named by the flag it came from.)
      if (!isHyperError(e, 'INVALID_ARGUMENT')) throw e;
      throw new HyperError(
        e.kind,
        e.code,
        e.message.replace(' for --endpoint:', ` for --${prefix}-endpoint:`),
        {
          suggestion: `Give the endpoint as a URL, e.g. --${prefix}-endpoint http://127.0.0.1:7480.`,
          cause: e,
        },
      );
    }
  }

  /** True with --json or --format json (also before the flags are parsed, for errors). */
  public override jsonEnabled(): boolean {
    return super.jsonEnabled() || jsonInArgv(this.argv);
  }

  /** The output format: --format, --json, else table on a terminal and plain otherwise. */
  protected get format(): OutputFormat {
    if (this.jsonEnabled()) return 'json';
    const given = formatInArgv(this.argv) ?? process.env.HYPER_FORMAT;
    if (given === 'table' || given === 'plain') return given;
    return defaultFormat(process.stdout.isTTY);
  }

  /** --quiet: no result text, progress or notes (errors and --json output still print). */
  protected get quiet(): boolean {
    const parsed = (this.flags as { quiet?: boolean } | undefined)?.quiet;
    return parsed ?? (this.argv.includes('--quiet') || this.argv.includes('-q'));
  }

  /** Colour for stdout (results) or stderr (errors, notes). */
  protected colorFor(stream: NodeJS.WriteStream): boolean {
    return colorEnabled(stream.isTTY, this.argv);
  }

  /** Text in a style when stdout is coloured. */
  protected paint(style: Style, text: string): string {
    return paint(this.colorFor(process.stdout), style, text);
  }

  /** Results for people go through here: nothing with --json or --quiet. */
  public override log(message = '', ...args: unknown[]): void {
    if (this.quiet) return;
    super.log(message, ...args);
  }

  /** True when a person can answer a question: stdin and stderr are terminals, not --json. */
  protected isInteractive(): boolean {
    return Boolean(process.stdin.isTTY && process.stderr.isTTY) && !this.jsonEnabled();
  }

  /**
   * Ask a yes/no question on the terminal (stderr); only call when isInteractive(). End of
   * input counts as "no"; Ctrl-C at the prompt is an interruption (exit code 130).
   */
  protected async confirm(question: string): Promise<boolean> {
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try {
      const answer = await new Promise<string>((resolve, reject) => {
        rl.on('SIGINT', () => {
          process.stderr.write('\n');
          reject(
            new HyperError(
              'unavailable',
              'ABORTED',
              'Interrupted at the prompt; nothing was changed.',
            ),
          );
        });
        rl.on('close', () => resolve(''));
        rl.question(`${question} [y/N] `).then(resolve, reject);
      });
      return /^y(es)?$/i.test(answer.trim());
    } finally {
      rl.close();
    }
  }

  /**
   * Ask, and stop unless the answer is yes: `Aborted.` on stderr and exit code 130
   * (EXIT_INTERRUPTED), as after Ctrl-C at the prompt; nothing was changed.
   */
  protected async confirmOrAbort(question: string): Promise<void> {
    if (await this.confirm(question)) return;
    process.stderr.write('Aborted.\n');
    this.exit(EXIT_INTERRUPTED);
  }

  /** Start a spinner on stderr (only on a terminal and not in --json mode). */
  protected spinner(text: string): Spinner {
    // A pseudo-terminal of width 0 (e.g. under `script` without a window size) would make
    // the spinner's line counting divide by zero; treat it as no terminal.
    const enabled =
      Boolean(process.stderr.isTTY) &&
      (process.stderr.columns ?? 0) > 0 &&
      !this.jsonEnabled() &&
      !this.quiet;
    const s = startSpinner(text, enabled);
    this.spinners.push(s);
    return s;
  }

  /**
   * Progress of a long operation, on stderr: the text of `spinner` on a terminal, or with
   * --progress (commands that have it) a plain line every few seconds on a non-terminal.
   */
  protected progress(spinner: Spinner): ProgressReporter {
    const forced = (this.flags as { progress?: boolean }).progress === true;
    const tty = Boolean(process.stderr.isTTY) && (process.stderr.columns ?? 0) > 0;
    const interval = Number(process.env.HYPER_PROGRESS_INTERVAL);
    return new ProgressReporter({
      spinnerText: (text) => {
        spinner.text = text;
      },
      ...(forced && (!tty || this.jsonEnabled())
        ? {
            line: (text: string) => process.stderr.write(`${text}\n`),
            ...(Number.isFinite(interval) && interval >= 0 ? { intervalMs: interval } : {}),
          }
        : {}),
    });
  }

  /** Width a table may take: the terminal's, else 80 columns. */
  private tableWidth(): number {
    const cols = process.stdout.isTTY ? (process.stdout.columns ?? 0) : 0;
    return cols > 0 ? cols : 80;
  }

  /**
   * Rows with a header: a bordered table that fits the terminal (80 columns when not a
   * terminal) in the table format, a header line and tab-separated lines in the plain one.
   */
  protected table(head: string[], rows: string[][]): string {
    if (this.format === 'plain') return plainTable(head, rows);
    return boxTable(head, rows, this.tableWidth(), this.colorFor(process.stdout));
  }

  /** Labels and values: a two-column table, or `label: value` lines in the plain format. */
  protected keyValueTable(rows: [string, string][]): string {
    if (this.format === 'plain') return plainFields(rows);
    return boxTable(undefined, rows, this.tableWidth(), false);
  }

  /**
   * Tells of a SIGINT/SIGTERM instead of the plain stderr lines (`again`: the second one,
   * which exits at once). Commands that log structured lines set it (serve).
   */
  protected interruptNotice: ((signal: NodeJS.Signals, again: boolean) => void) | undefined;

  /** Print a line on stderr unless --json or --quiet (notes and warnings, never results). */
  protected note(message: string): void {
    if (this.quiet) return;
    this.logToStderr(message);
  }

  /**
   * An AbortSignal that fires on the first SIGINT or SIGTERM, so that a long operation can
   * stop cleanly; a second signal exits at once with code 130.
   */
  protected interruptible(): AbortSignal {
    if (this.abortController) return this.abortController.signal;
    const ac = new AbortController();
    const handler = (signal: NodeJS.Signals): void => {
      const notice = this.interruptNotice;
      if (ac.signal.aborted) {
        if (notice) notice(signal, true);
        else process.stderr.write('\nInterrupted again: exiting now.\n');
        process.exit(EXIT_INTERRUPTED);
      }
      for (const s of this.spinners) s.stop();
      if (notice) notice(signal, false);
      else
        process.stderr.write(
          `\nReceived ${signal}: stopping cleanly (press Ctrl-C again to exit at once)…\n`,
        );
      ac.abort(new HyperError('unavailable', 'ABORTED', `Interrupted by ${signal}.`));
    };
    process.on('SIGINT', handler);
    process.on('SIGTERM', handler);
    this.abortController = ac;
    this.signalHandler = handler;
    return ac.signal;
  }

  /** Throw the abort reason (an ABORTED HyperError) if the signal fired. */
  protected static throwIfAborted(signal: AbortSignal | undefined): void {
    if (signal?.aborted) throw toHyperError(signal.reason);
  }

  public override async catch(err: Errors.CLIError | Error): Promise<void> {
    // this.exit() and --help/--version use ExitError: not a failure to report.
    if (err instanceof Errors.ExitError) throw err;
    for (const s of this.spinners) s.stop();
    if (readerGone(err)) {
      // What reads our output stopped reading (`hyper file export URL - | head -c 10`): the
      // command stops as one killed by SIGPIPE does, without a word (nobody reads them).
      process.exitCode = EXIT_READER_GONE;
      return;
    }
    const hyper = this.toHyper(err);
    const exitCode = exitCodeFor(hyper);
    process.exitCode = exitCode;
    if (this.jsonEnabled()) {
      const indent = (this.ctor as typeof BaseCommand).jsonLines ? 0 : 2;
      process.stdout.write(`${JSON.stringify(errorJson(hyper, exitCode), null, indent)}\n`);
      return;
    }
    const lines = [errorText(hyper, this.colorFor(process.stderr))];
    if (hyper.kind === 'internal') {
      if (process.env.HYPER_DEBUG)
        lines.push(String((hyper.cause as Error | undefined)?.stack ?? hyper.stack));
      else lines.push('Set HYPER_DEBUG=1 to print the stack trace.');
    }
    process.stderr.write(`${lines.join('\n')}\n`);
  }

  public override async finally(err: Error | undefined): Promise<void> {
    for (const s of this.spinners) s.stop();
    if (this.signalHandler) {
      process.off('SIGINT', this.signalHandler);
      process.off('SIGTERM', this.signalHandler);
    }
    await Promise.allSettled(this.stores.map((s) => s.close()));
    await super.finally(err);
  }

  /** Errors of argument parsing become `invalid` HyperErrors; anything else is wrapped. */
  private toHyper(err: Error): HyperError {
    const flagMessage = originalFlagMessage(err);
    if (err instanceof HyperError) {
      if (flagMessage === undefined) return err;
      return new HyperError(err.kind, err.code, flagMessage, {
        ...(err.suggestion === undefined ? {} : { suggestion: err.suggestion }),
        cause: err,
      });
    }
    const help = `Run "${this.config.bin} ${this.id?.replaceAll(':', ' ') ?? ''} --help" for usage.`;
    const unknown = this.unknownFlag(err, help);
    if (unknown) return unknown;
    if (flagMessage !== undefined) {
      return new HyperError('invalid', 'INVALID_ARGUMENT', flagMessage, {
        suggestion: help,
        cause: err,
      });
    }
    const missing = this.missingArgs(err, help);
    if (missing) return missing;
    if (err instanceof Errors.CLIError || !this.parsed) {
      const message = err.message
        .replace(/^Parsing (--\S+) \n\t/, '$1: ')
        .replace(/\nSee more help with --help$/, '')
        .replace(/^The following errors? occurred:\n\s*/, '')
        .replace(/\n\s+/g, '; ')
        .replace(/Missing required flag ([\w-]+)/g, 'Missing required flag --$1')
        .trim();
      return new HyperError('invalid', 'INVALID_ARGUMENT', message, {
        suggestion: help,
        cause: err,
      });
    }
    return toHyperError(err);
  }

  /**
   * Required arguments not given (oclif's RequiredArgsError): each named with what it is.
   * oclif's note on flags taking several values (arguments must come before them) is kept
   * only when such a flag was actually given.
   */
  private missingArgs(err: Error, help: string): HyperError | undefined {
    const args = (err as { args?: { name?: string; description?: string }[] }).args;
    if (!Array.isArray(args) || !/^Missing \d+ required args?/.test(err.message)) return undefined;
    const named = args.map((a) =>
      a.description
        ? `${(a.name ?? '').toUpperCase()} (${a.description.replace(/\.$/, '')})`
        : (a.name ?? '').toUpperCase(),
    );
    const ctor = this.ctor as typeof BaseCommand;
    const defs = { ...ctor.baseFlags, ...ctor.flags } as Record<string, { multiple?: boolean }>;
    const given = Object.keys(defs).filter(
      (n) =>
        defs[n]?.multiple === true &&
        this.argv.some((a) => a === `--${n}` || a.startsWith(`--${n}=`)),
    );
    const note =
      given.length === 0
        ? ''
        : ` (${given.map((n) => `--${n}`).join(', ')} takes several values: give the arguments before it, or end the flags with "--")`;
    return new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Missing the required argument${named.length === 1 ? '' : 's'} ${named.join(', ')}${note}`,
      { suggestion: help, cause: err },
    );
  }

  /** An unknown flag (oclif's "Nonexistent flag"): UNKNOWN_FLAG, with the closest flags. */
  private unknownFlag(err: Error, help: string): HyperError | undefined {
    const m = /^Nonexistent flags?: (.+?)(?:\n|$)/.exec(err.message);
    if (!m) return undefined;
    const given = (m[1] ?? '').split(/,\s*/).filter(Boolean);
    const ctor = this.ctor as typeof BaseCommand;
    const defs = { ...ctor.baseFlags, ...ctor.flags } as Record<
      string,
      { char?: string; allowNo?: boolean }
    >;
    const names = ['json', 'help'];
    for (const [name, def] of Object.entries(defs)) {
      names.push(name);
      if (def.allowNo) names.push(`no-${name}`);
    }
    const first = given[0] ?? '';
    const bare = first.replace(/^--?/, '').replace(/=.*$/, '');
    const matches = closest(bare, names).map((n) => `--${n}`);
    const hint = didYouMean(matches);
    return new HyperError(
      'invalid',
      'UNKNOWN_FLAG',
      `Unknown flag${given.length > 1 ? 's' : ''} ${given.join(', ')} for "${this.config.bin} ${this.id?.replaceAll(':', ' ') ?? ''}"`,
      { suggestion: hint ? `${hint} ${help}` : help, cause: err },
    );
  }
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/** `--profile NAME` / `--profile=NAME` from the raw command line (before parsing). */
function profileInArgv(argv: string[]): { profile?: string } {
  for (let i = 0; i < argv.length; i++) {
    const t = argv[i]!;
    if (t === '--') break;
    if (t === '--profile' && i + 1 < argv.length) return { profile: argv[i + 1]! };
    if (t.startsWith('--profile=')) return { profile: t.slice('--profile='.length) };
  }
  return {};
}

/** Store options from resolved settings (flags, environment, configuration file). */
function storeOptionsOf(settings: ResolvedSettings): OpenStoreOptions {
  return {
    ...(settings.endpoint.value === null ? {} : { endpoint: settings.endpoint.value }),
    ...(settings.region.value === null ? {} : { region: settings.region.value }),
    ...(settings.awsProfile.value === null ? {} : { profile: settings.awsProfile.value }),
    payloadSigning: parsePayloadSigning(
      settings.payloadSigning.value ?? 'auto',
      settings.payloadSigning.from ?? 'payloadSigning',
    ),
    connectionTimeoutMs: timeoutMs(settings.connectTimeout, 'connectTimeout'),
    requestTimeoutMs: timeoutMs(settings.idleTimeout, 'idleTimeout'),
    maxAttempts: attemptsOf(settings.maxAttempts, 'maxAttempts'),
  };
}
