/**
 * The configuration file and where each store setting comes from.
 *
 * `~/.config/hyper/config.json` (or `$XDG_CONFIG_HOME/hyper/config.json`, or the file named by
 * `HYPER_CONFIG`) holds the store settings (endpoint, region, AWS profile), named profiles of
 * them, and default flags per command. Every setting is resolved with one precedence:
 * command-line flag > environment variable > the selected profile in the file > the top of the
 * file > built-in default; `hyper config show` prints each with its source.
 *
 * Profiles work like the aws CLI's `--profile`: `--profile NAME` (or `HYPER_PROFILE`, or
 * `"profile"` in the file) selects the section `profiles.NAME` of this file when there is one
 * (its endpoint, region, AWS profile and defaults apply), and otherwise the AWS shared-config
 * profile NAME (`~/.aws/config`, `~/.aws/credentials`) for credentials, as `aws --profile NAME`
 * would.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { HyperError } from '../errors.js';
import { readJsonFile } from '../json-file.js';
import { PAYLOAD_SIGNING_ENV, parsePayloadSigning } from '../format/store/common.js';
import {
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_ATTEMPTS,
} from '../format/store/types.js';
import { formatDuration, parseDuration } from './units.js';
import type { ConfigFile, ProfileSection } from './config-schema.js';

export type { ConfigFile, ProfileSection };

/** An S3 endpoint URL (the schema checks the file's with it too). */
export const ENDPOINT_RE = /^https?:\/\/[^/\s]+/i;

/** The most attempts a store request may be given (the first included). */
export const MAX_ATTEMPTS_LIMIT = 20;

/** Environment variables of the store's timeouts and attempts (README "Configuration"). */
export const CONNECT_TIMEOUT_ENV = 'HYPER_S3_CONNECT_TIMEOUT';
export const IDLE_TIMEOUT_ENV = 'HYPER_S3_IDLE_TIMEOUT';
export const MAX_ATTEMPTS_ENV = 'HYPER_S3_MAX_ATTEMPTS';

/** Where a setting's value came from. */
export type SettingSource = 'flag' | 'env' | 'profile' | 'file' | 'default';

export interface Setting {
  value: string | null;
  source: SettingSource;
  /** The flag, variable or file entry the value was read from (e.g. `AWS_REGION`). */
  from: string | null;
}

export interface LoadedConfig {
  /** The path looked at (absolute). */
  path: string;
  /** True when the file exists (an absent file is an empty configuration). */
  exists: boolean;
  config: ConfigFile;
  /**
   * Why the file at the default location could not be read (permission denied: another
   * user's home, as `sudo -u` or a service's User= leave HOME), when it was gone on without.
   */
  unreadable?: string;
}

/** The path of the configuration file: HYPER_CONFIG, else the XDG location. */
export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HYPER_CONFIG) return resolve(env.HYPER_CONFIG);
  const base = env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return join(base, 'hyper', 'config.json');
}

function invalid(path: string, why: string): HyperError {
  return new HyperError('invalid', 'INVALID_CONFIG', `Invalid configuration file ${path}: ${why}`, {
    suggestion: `Fix or move the file (\`hyper config show\` prints what applies; HYPER_CONFIG names another file).`,
  });
}

/**
 * Read and validate the configuration file. A missing file at the default location is an
 * empty configuration; a file named by HYPER_CONFIG must exist. Invalid JSON or content is
 * INVALID_CONFIG (exit code 2), naming the file and the first problem.
 */
export async function loadConfig(env: NodeJS.ProcessEnv = process.env): Promise<LoadedConfig> {
  const path = configPath(env);
  const schema = async () => (await import('./config-schema.js')).configSchema;
  let config: ConfigFile | undefined;
  try {
    config = await readJsonFile(path, schema, (problem) => invalid(path, problem), {
      missingOk: true,
    });
  } catch (e) {
    const code = (e as { cause?: NodeJS.ErrnoException }).cause?.code;
    if (code !== 'EACCES' && code !== 'EPERM') throw e;
    // As git does with a configuration it may not read: the default location is passed over
    // with a note; a file named on purpose must be readable.
    if (!env.HYPER_CONFIG)
      return { path, exists: false, config: {}, unreadable: 'permission denied' };
    throw new HyperError(
      'invalid',
      'PERMISSION_DENIED',
      `Cannot read the configuration file ${path}: permission denied`,
      {
        cause: e,
        suggestion: `Make it readable by this user (chmod, chown), or point HYPER_CONFIG at a file this user can read.`,
      },
    );
  }
  if (!config) {
    if (env.HYPER_CONFIG) throw invalid(path, 'no such file (named by HYPER_CONFIG)');
    return { path, exists: false, config: {} };
  }
  for (const [section, d] of defaultSections(config)) {
    for (const [command, flags] of Object.entries(d)) {
      for (const flag of Object.keys(flags)) {
        if (RESERVED_FLAGS.has(flag)) {
          throw invalid(
            path,
            `${section}.${command}.${flag}: "${flag}" is a store setting, not a default flag (set "${flag}" ${section === 'defaults' ? 'at the top of the file' : 'in the profile'})`,
          );
        }
      }
    }
  }
  return { path, exists: true, config };
}

/** Settings that are not default flags (they have their own place in the file). */
const RESERVED_FLAGS = new Set([
  'endpoint',
  'region',
  'profile',
  'payloadSigning',
  'connectTimeout',
  'idleTimeout',
  'maxAttempts',
]);

function defaultSections(c: ConfigFile): [string, NonNullable<ConfigFile['defaults']>][] {
  const out: [string, NonNullable<ConfigFile['defaults']>][] = [];
  if (c.defaults) out.push(['defaults', c.defaults]);
  for (const [name, p] of Object.entries(c.profiles ?? {})) {
    if (p.defaults) out.push([`profiles.${name}.defaults`, p.defaults]);
  }
  return out;
}

export interface ResolvedSettings {
  configPath: string;
  configExists: boolean;
  /** The profile selected (a section of the file, or an AWS profile name). */
  profile: Setting;
  /** True when the profile names a section of the configuration file. */
  profileInFile: boolean;
  /** The AWS shared-config profile used for credentials (null: the SDK's default chain). */
  awsProfile: Setting;
  endpoint: Setting;
  region: Setting;
  /** Whether S3 PUT bodies are signed: auto, on or off (see StoreOptions.payloadSigning). */
  payloadSigning: Setting;
  /** How long a connection to the store may take to open (a duration, e.g. `5s`). */
  connectTimeout: Setting;
  /** How long a request may go without a byte moving either way (a duration, e.g. `60s`). */
  idleTimeout: Setting;
  /** Attempts per store request that fails in a retryable way, the first included. */
  maxAttempts: Setting;
}

/** A bad value read from the file is the file's error (INVALID_CONFIG), else the argument's. */
function asSettingError(s: Setting, e: HyperError): HyperError {
  if (s.source !== 'file' && s.source !== 'profile') return e;
  return new HyperError('invalid', 'INVALID_CONFIG', e.message, {
    ...(e.suggestion === undefined ? {} : { suggestion: e.suggestion }),
    cause: e,
  });
}

/** A store timeout setting in milliseconds, checked (100 ms to 1 h). */
export function timeoutMs(s: Setting, key: string): number {
  try {
    return parseDuration(s.value ?? '', { name: s.from ?? key, minMs: 100, maxMs: 3_600_000 });
  } catch (e) {
    throw e instanceof HyperError ? asSettingError(s, e) : e;
  }
}

/** The attempts setting as a number, checked (1 to MAX_ATTEMPTS_LIMIT). */
export function attemptsOf(s: Setting, key: string): number {
  const v = s.value ?? '';
  const n = /^\d+$/.test(v.trim()) ? Number(v) : Number.NaN;
  if (!(n >= 1 && n <= MAX_ATTEMPTS_LIMIT)) {
    throw asSettingError(
      s,
      new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `Invalid value ${JSON.stringify(v)} for ${s.from ?? key}: expected a whole number from 1 to ${MAX_ATTEMPTS_LIMIT}`,
        { suggestion: `Set ${s.from ?? key} to the attempts per request, e.g. 3 (1: no retries).` },
      ),
    );
  }
  return n;
}

const none = (source: SettingSource = 'default'): Setting => ({
  value: null,
  source,
  from: null,
});

/**
 * Resolve the store settings: flag > environment > selected profile > top of the file >
 * default. `flags` holds only what was given on the command line.
 */
export function resolveSettings(
  loaded: LoadedConfig,
  flags: { endpoint?: string; region?: string; profile?: string },
  env: NodeJS.ProcessEnv = process.env,
): ResolvedSettings {
  const c = loaded.config;
  const file = (key: string): string => `${loaded.path}: ${key}`;

  let profile: Setting = none();
  if (flags.profile !== undefined)
    profile = { value: flags.profile, source: 'flag', from: '--profile' };
  else if (env.HYPER_PROFILE)
    profile = { value: env.HYPER_PROFILE, source: 'env', from: 'HYPER_PROFILE' };
  else if (c.profile !== undefined)
    profile = { value: c.profile, source: 'file', from: file('profile') };

  const section: ProfileSection | undefined =
    profile.value === null ? undefined : c.profiles?.[profile.value];
  if (profile.value !== null && section === undefined && profile.source === 'file') {
    // The file's default profile must be one of its own sections or an AWS profile: both fine.
  }
  const sectionKey = (key: string): string => file(`profiles.${profile.value}.${key}`);

  const pick = (
    key:
      'endpoint' | 'region' | 'payloadSigning' | 'connectTimeout' | 'idleTimeout' | 'maxAttempts',
    flagValue: string | undefined,
    envNames: string[],
  ): Setting => {
    if (flagValue !== undefined) return { value: flagValue, source: 'flag', from: `--${key}` };
    for (const name of envNames) {
      const v = env[name];
      if (v) return { value: v, source: 'env', from: name };
    }
    const fromSection = section?.[key];
    if (fromSection !== undefined)
      return { value: String(fromSection), source: 'profile', from: sectionKey(key) };
    const top = c[key];
    if (top !== undefined) return { value: String(top), source: 'file', from: file(key) };
    return none();
  };
  /** A setting that has a built-in default (shown as such). */
  const withDefault = (s: Setting, value: string): Setting =>
    s.value === null ? { value, source: 'default', from: null } : s;

  const endpointSetting = pick('endpoint', flags.endpoint, [
    'AWS_ENDPOINT_URL_S3',
    'AWS_ENDPOINT_URL',
  ]);
  if (endpointSetting.value !== null && !ENDPOINT_RE.test(endpointSetting.value)) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Invalid value ${JSON.stringify(endpointSetting.value)} for ${endpointSetting.from}: expected http(s)://host[:port]`,
      { suggestion: 'Give the endpoint as a URL, e.g. --endpoint http://127.0.0.1:7480.' },
    );
  }
  let payloadSigning = pick('payloadSigning', undefined, [PAYLOAD_SIGNING_ENV]);
  if (payloadSigning.value === null)
    payloadSigning = { value: 'auto', source: 'default', from: null };
  else parsePayloadSigning(payloadSigning.value, payloadSigning.from ?? 'payloadSigning');
  const connectTimeout = withDefault(
    pick('connectTimeout', undefined, [CONNECT_TIMEOUT_ENV]),
    formatDuration(DEFAULT_CONNECT_TIMEOUT_MS),
  );
  timeoutMs(connectTimeout, 'connectTimeout');
  const idleTimeout = withDefault(
    pick('idleTimeout', undefined, [IDLE_TIMEOUT_ENV]),
    formatDuration(DEFAULT_IDLE_TIMEOUT_MS),
  );
  timeoutMs(idleTimeout, 'idleTimeout');
  const maxAttempts = withDefault(
    pick('maxAttempts', undefined, [MAX_ATTEMPTS_ENV]),
    String(DEFAULT_MAX_ATTEMPTS),
  );
  attemptsOf(maxAttempts, 'maxAttempts');
  let regionSetting = pick('region', flags.region, ['AWS_REGION', 'AWS_DEFAULT_REGION']);
  if (regionSetting.value === null)
    regionSetting = { value: 'us-east-1', source: 'default', from: null };

  // The AWS profile for credentials: the section's awsProfile; a profile that is no section of
  // this file is an AWS profile itself (as with `aws --profile`); else the file's awsProfile;
  // else AWS_PROFILE, which the SDK reads itself.
  let aws: Setting = none();
  if (section?.awsProfile !== undefined)
    aws = { value: section.awsProfile, source: 'profile', from: sectionKey('awsProfile') };
  else if (profile.value !== null && section === undefined)
    aws = { value: profile.value, source: profile.source, from: profile.from };
  else if (c.awsProfile !== undefined)
    aws = { value: c.awsProfile, source: 'file', from: file('awsProfile') };
  else if (env.AWS_PROFILE) aws = { value: env.AWS_PROFILE, source: 'env', from: 'AWS_PROFILE' };

  return {
    configPath: loaded.path,
    configExists: loaded.exists,
    profile,
    profileInFile: section !== undefined,
    awsProfile: aws,
    endpoint: endpointSetting,
    region: regionSetting,
    payloadSigning,
    connectTimeout,
    idleTimeout,
    maxAttempts,
  };
}

/** A default flag from the configuration file, for one command. */
export interface DefaultFlag {
  flag: string;
  value: string | number | boolean;
  /** `defaults.<command>` or `profiles.<name>.defaults.<command>`, with the file's path. */
  from: string;
  source: 'file' | 'profile';
}

/** Normalise a command id as written in the file: `file import`, `file:import`. */
function commandKey(id: string): string {
  return id.trim().replace(/\s+/g, ':');
}

/**
 * The default flags the file sets for command `id`: `*` first, then the command's own, then
 * the selected profile's (each later one overrides a flag of an earlier one).
 */
export function defaultFlagsFor(
  loaded: LoadedConfig,
  settings: ResolvedSettings,
  id: string,
  aliases: string[] = [],
): DefaultFlag[] {
  const ids = new Set([id, ...aliases].map(commandKey));
  const out = new Map<string, DefaultFlag>();
  const add = (d: ConfigFile['defaults'], source: 'file' | 'profile', prefix: string): void => {
    if (!d) return;
    const entries = Object.entries(d);
    for (const pass of ['*', 'command'] as const) {
      for (const [command, flags] of entries) {
        const key = commandKey(command);
        if (pass === '*' ? key !== '*' : !ids.has(key)) continue;
        for (const [flag, value] of Object.entries(flags)) {
          out.set(flag, {
            flag,
            value,
            from: `${loaded.path}: ${prefix}.${command}.${flag}`,
            source,
          });
        }
      }
    }
  };
  add(loaded.config.defaults, 'file', 'defaults');
  const name = settings.profile.value;
  if (name !== null && settings.profileInFile) {
    add(loaded.config.profiles?.[name]?.defaults, 'profile', `profiles.${name}.defaults`);
  }
  return [...out.values()];
}

/** What the parser needs to know about a command's flags. */
export interface FlagShape {
  type: 'boolean' | 'option';
  char?: string;
  aliases?: string[];
  allowNo?: boolean;
}

/**
 * The command line with the file's default flags added for flags that `argv` does not give
 * (a flag on the command line always wins). A default for a flag the command does not have is
 * an INVALID_CONFIG error, except under `*` (it applies where the flag exists).
 */
export function argvWithDefaults(
  argv: string[],
  defaultsList: DefaultFlag[],
  commandFlags: Record<string, FlagShape>,
  commandId: string,
  configFile: string,
): { argv: string[]; applied: DefaultFlag[] } {
  const end = argv.indexOf('--');
  const head = end === -1 ? argv : argv.slice(0, end);
  const tail = end === -1 ? [] : argv.slice(end);
  const added: string[] = [];
  const applied: DefaultFlag[] = [];
  for (const d of defaultsList) {
    const shape = commandFlags[d.flag];
    if (!shape) {
      if (/\.\*\.[^.]+$/.test(d.from)) continue;
      throw invalid(
        configFile,
        `${d.from.slice(configFile.length + 2)}: "hyper ${commandId.replaceAll(':', ' ')}" has no flag --${d.flag}`,
      );
    }
    const names = [`--${d.flag}`, ...(shape.aliases ?? []).map((a) => `--${a}`)];
    if (shape.allowNo) names.push(`--no-${d.flag}`);
    const given = head.some(
      (t) =>
        names.some((n) => t === n || t.startsWith(`${n}=`)) ||
        (shape.char !== undefined && new RegExp(`^-[^-]*${shape.char}`).test(t)),
    );
    if (given) continue;
    if (shape.type === 'boolean') {
      if (d.value === true || d.value === 'true') added.push(`--${d.flag}`);
      else if ((d.value === false || d.value === 'false') && shape.allowNo)
        added.push(`--no-${d.flag}`);
      else if (d.value !== false && d.value !== 'false') {
        throw invalid(configFile, `${d.from.slice(configFile.length + 2)}: expected true or false`);
      } else continue;
    } else {
      added.push(`--${d.flag}=${String(d.value)}`);
    }
    applied.push(d);
  }
  return { argv: [...head, ...added, ...tail], applied };
}
