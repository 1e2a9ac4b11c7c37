/**
 * Flag and argument types shared by every hyper command. Sizes, durations and times each go
 * through one parser (src/cli/units.ts), so `--size 10G` means the same everywhere and a bad
 * value is reported the same way: the flag, the value, and the accepted forms (exit code 2).
 */
import { Args, Flags } from '@oclif/core';
import { HyperError } from './errors.js';
import {
  DURATION_FORMS,
  SIZE_FORMS,
  formatDuration,
  TIME_FORMS,
  parseDuration,
  parseSize,
  parseTime,
  type DurationBounds,
  type SizeBounds,
} from './cli/units.js';
import { URL_FORMS, normalizeVolumeUrl } from './cli/url.js';
import { CHECKPOINT_REF_FORMS, parseCheckpointRef } from './cli/checkpoint-ref.js';
import { COMPRESSIONS } from './format/codec/block.js';
import { CIPHERS } from './format/codec/seal.js';
import {
  DEFAULT_COMPRESSION,
  DEFAULT_GRACE_MS,
  DEFAULT_MIN_LIVE,
  GiB,
  MiB,
  type CheckpointRef,
} from './format/volume/types.js';
import type { VolumeTuning } from './serve/server.js';
import type { CompactionPolicy } from './serve/compaction.js';
import { defaultControlSocket } from './daemon/paths.js';

/**
 * oclif rewrites the message of an error thrown by a flag parser ("Parsing --x \n\t…"). The
 * original is kept here so that the base command can print the clean one.
 */
const originalMessages = new WeakMap<Error, string>();

/** The message an error had before oclif decorated it, if it came from one of these flags. */
export function originalFlagMessage(e: unknown): string | undefined {
  return e instanceof Error ? originalMessages.get(e) : undefined;
}

function keepMessage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof Error) originalMessages.set(e, e.message);
    throw e;
  }
}

/**
 * A byte size: `4096`, `4K`, `4KiB`, `512KiB`, `10G`, `1.5G`, `1TiB` (powers of 1024).
 * Options `min`, `max`, `multipleOf`, `powerOfTwo` bound it per flag.
 */
export const size = Flags.custom<number, SizeBounds>({
  helpValue: '<size>',
  parse: async (input, _ctx, opts) =>
    keepMessage(() =>
      parseSize(input, {
        name: `--${opts.name}`,
        min: opts.min,
        max: opts.max,
        multipleOf: opts.multipleOf,
        powerOfTwo: opts.powerOfTwo,
      }),
    ),
});

/** A size that may be relative: `10G` (absolute), `+1G` (grow by), `-1G` (shrink by). */
export interface SizeChange {
  /** `+` or `-` for a change relative to the current size; absent for an absolute size. */
  sign?: '+' | '-';
  bytes: number;
}

/**
 * A size flag that also takes `+<size>` / `-<size>` (relative to the current size). The bounds
 * apply to the number after the sign; the command checks the resulting size.
 */
export const sizeChange = Flags.custom<SizeChange, SizeBounds>({
  helpValue: '[+|-]<size>',
  parse: async (input, _ctx, opts) =>
    keepMessage(() => {
      const m = /^\s*([+-])\s*(.*)$/.exec(input);
      const bytes = parseSize(m ? m[2]! : input, {
        name: `--${opts.name}`,
        min: opts.min,
        max: opts.max,
        multipleOf: opts.multipleOf,
        powerOfTwo: opts.powerOfTwo,
      });
      return m ? { sign: m[1] as '+' | '-', bytes } : { bytes };
    }),
});

/** A duration in milliseconds: `30s`, `5m`, `2h`, `7d`, `1h30m`. */
export const duration = Flags.custom<number, DurationBounds>({
  helpValue: '<duration>',
  parse: async (input, _ctx, opts) =>
    keepMessage(() =>
      parseDuration(input, { name: `--${opts.name}`, minMs: opts.minMs, maxMs: opts.maxMs }),
    ),
});

/** A point in time: ISO-8601 (`2026-01-31T12:00:00Z`) or a duration ago (`2h`, `7d`). */
export const time = Flags.custom<Date>({
  helpValue: '<time>',
  parse: async (input, _ctx, opts) =>
    keepMessage(() => parseTime(input, { name: `--${opts.name}` })),
});

/**
 * A checkpoint reference: a number (`42`), a snapshot name (`before-upgrade`), an ISO-8601
 * time or a duration ago (`2h`); `checkpoint:`, `snapshot:` or `time:` make it explicit.
 */
export const checkpointRef = Flags.custom<CheckpointRef>({
  helpValue: '<checkpoint|snapshot|time>',
  parse: async (input, _ctx, opts) =>
    keepMessage(() => parseCheckpointRef(input, { name: `--${opts.name}` })),
});

/** A checkpoint to read instead of the current one (`--at` and the like), with its help. */
export const checkpointAt = (summary: string) =>
  checkpointRef({
    summary,
    description: `Accepts ${CHECKPOINT_REF_FORMS}. A time means the last checkpoint made at or before it.`,
  });

/**
 * Where a command's second store is (`file copy --target-…`, `file compare --second-…`), when
 * it is not where the first one is: the same three settings as the store flags, under
 * `<prefix>-endpoint`, `<prefix>-region` and `<prefix>-profile`.
 */
export function otherStoreFlags<P extends string>(prefix: P, what: string) {
  const one = (summary: string, helpValue: string) => Flags.string({ summary, helpValue });
  return {
    [`${prefix}-endpoint`]: one(
      `S3 endpoint URL of ${what}, when it is not that of the first volume.`,
      '<url>',
    ),
    [`${prefix}-region`]: one(
      `S3 region of ${what}, when it is not that of the first volume.`,
      '<region>',
    ),
    [`${prefix}-profile`]: one(
      `Profile of ${what}: a section of the hyper config file, or else an AWS shared-config profile.`,
      '<name>',
    ),
  } as Record<`${P}-endpoint` | `${P}-region` | `${P}-profile`, ReturnType<typeof one>>;
}

/**
 * Flags every command takes: where the S3-compatible store is. The environment and the
 * configuration file are read by src/cli/config.ts (flag > environment > file), not by oclif,
 * so that `hyper config show` can tell where each value came from.
 */
export const storeFlags = {
  endpoint: Flags.string({
    summary:
      'S3 endpoint URL for S3-compatible stores (MinIO, Ceph RGW, …); env: AWS_ENDPOINT_URL.',
    helpGroup: 'STORE',
    helpValue: '<url>',
    parse: async (input) =>
      keepMessage(() => {
        if (!/^https?:\/\/[^/\s]+/i.test(input)) {
          throw new Error(
            `Invalid value ${JSON.stringify(input)} for --endpoint: expected http(s)://host[:port]`,
          );
        }
        return input;
      }),
  }),
  region: Flags.string({
    summary: 'S3 region; env: AWS_REGION, AWS_DEFAULT_REGION (default us-east-1).',
    helpGroup: 'STORE',
    helpValue: '<region>',
  }),
  profile: Flags.string({
    summary:
      'Profile: a section of the hyper config file, or else an AWS shared-config profile; env: HYPER_PROFILE.',
    helpGroup: 'STORE',
    helpValue: '<name>',
  }),
  'key-file': Flags.string({
    summary:
      'Key of encrypted volumes: a file of 32 raw bytes, 64 hex digits or base64; repeat for several keys; env: HYPER_KEY_FILE (paths separated by ":").',
    multiple: true,
    helpGroup: 'STORE',
    helpValue: '<path>',
  }),
};

/** `--progress`: periodic progress lines on stderr even when it is not a terminal. */
/** How new blocks of a volume being created are stored (FORMAT.md "Block codecs"). */
export const compression = Flags.string({
  summary: 'Compression of data blocks: zstd, lz4 or none.',
  description:
    'A block is stored compressed only when that saves at least 512 bytes. zstd stores less, lz4 costs less CPU. Any value but none makes a format version 2 volume, which hyper versions without block codecs refuse to open.',
  options: [...COMPRESSIONS],
  default: DEFAULT_COMPRESSION,
});

/** Client-side encryption of a volume being created (FORMAT.md "Encryption"). */
export const encryption = Flags.string({
  summary:
    'Encrypt data blocks and index nodes with the key of --key-file: xchacha20-poly1305, aes-256-gcm or none.',
  description:
    'Authenticated encryption on this host before anything is sent; the volume records the key id, never the key. xchacha20-poly1305 costs about a quarter of the CPU of aes-256-gcm here; choose AES where it is required. Makes a format version 2 volume.',
  options: ['none', ...CIPHERS],
  default: 'none',
});

/** Deduplication of a volume being created (FORMAT.md "Deduplication"). */
export const dedup = Flags.boolean({
  summary: 'Store blocks of equal content once (a content-hash index in the volume).',
  description:
    'Each new block is hashed (BLAKE2b-256, keyed by the volume key when encrypted) and looked up in an index kept in the volume itself, loaded piecewise like the block index; a block already stored is referenced again instead of stored. Costs CPU and index writes on every flush; pays off for many similar VM images, backups and copies. Makes a format version 2 volume.',
});

export const progress = Flags.boolean({
  summary:
    'Print progress lines on stderr every few seconds even when it is not a terminal (CI logs).',
});

/**
 * The caches and write buffer of served volumes: `serve` and `daemon` take the same flags
 * (`cacheDirNote` says how the disk cache directory is divided between volumes).
 */
export function tuningFlags(cacheDirNote: string) {
  return {
    'cache-dir': Flags.string({
      summary: `Keep data blocks and index nodes read from the store in a cache in this local directory (${cacheDirNote}); reused after a restart.`,
      helpValue: '<dir>',
    }),
    'cache-size': size({
      summary: 'Size of the disk cache of each volume (with --cache-dir).',
      default: 10 * GiB,
      min: 1 * MiB,
    }),
    'cache-mode': Flags.string({
      summary:
        '"reuse" (the default) keeps what a previous run of the same volume cached; "recreate" empties the cache first.',
      options: ['reuse', 'recreate'],
      default: 'reuse',
    }),
    'memory-cache': size({
      summary: 'Bytes of clean data blocks each volume keeps in memory.',
      default: 32 * MiB,
      min: 0,
    }),
    'read-ahead': size({
      summary:
        'Largest read-ahead window for sequential reads (default 16M for S3 and 0 for file:// volumes; 0 turns it off; bounded by half of --memory-cache).',
      min: 0,
    }),
    'index-cache': size({
      summary: 'Bytes of index nodes each volume keeps in memory (default 32M).',
      min: 0,
    }),
    'max-dirty': size({
      summary:
        "Bytes written but not yet stored (segments being uploaded included) each writable volume holds before writers wait (default three segments, 96M with 32 MiB segments, and two while the writes are small and scattered; raised to two segments if lower). Most of a writing volume's memory.",
      min: 1 * MiB,
    }),
  };
}

/** The serving library's settings from the flags of `tuningFlags`. */
export function tuningOf(flags: {
  'cache-dir'?: string | undefined;
  'cache-size': number;
  'cache-mode': string;
  'memory-cache': number;
  'read-ahead'?: number | undefined;
  'index-cache'?: number | undefined;
  'max-dirty'?: number | undefined;
}): VolumeTuning {
  return {
    memoryCacheBytes: flags['memory-cache'],
    ...(flags['read-ahead'] === undefined ? {} : { readAheadBytes: flags['read-ahead'] }),
    ...(flags['index-cache'] === undefined ? {} : { indexCacheBytes: flags['index-cache'] }),
    ...(flags['max-dirty'] === undefined ? {} : { maxDirtyBytes: flags['max-dirty'] }),
    ...(flags['cache-dir'] === undefined
      ? {}
      : {
          diskCache: {
            dir: flags['cache-dir'],
            sizeBytes: flags['cache-size'],
            mode: flags['cache-mode'] === 'recreate' ? 'recreate' : 'reuse',
          },
        }),
  };
}

/** A fraction from 0 to 1 (`0.9`, `.5`, `1`): compaction's min-live. */
function parseFraction(input: string, name: string): number {
  const v = /^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*$/.test(input) ? Number(input) : NaN;
  if (!(v >= 0 && v <= 1))
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Invalid value ${JSON.stringify(input)} for ${name}: expected a fraction between 0 and 1`,
      { suggestion: 'Use e.g. 0.9 (rewrite segments less than 90% live) or 0 (rewrite nothing).' },
    );
  return v;
}

export const fraction = Flags.custom<number>({
  helpValue: '<fraction>',
  parse: async (input, _ctx, opts) => keepMessage(() => parseFraction(input, `--${opts.name}`)),
});

/**
 * Online compaction of the volumes `serve` and `daemon` write (serve/compaction.ts): how often,
 * and the retention policy of `hyper compact`.
 */
export function compactionFlags() {
  const group = { helpGroup: 'COMPACTION' };
  return {
    'compact-every': duration({
      summary:
        'Compact each writable volume online this often (e.g. 1h), beside its clients: drop checkpoints outside the policy below, move live blocks out of mostly dead segments, delete what nothing reads. Off by default.',
      minMs: 1000,
      ...group,
    }),
    'compact-keep-last': Flags.integer({
      summary:
        'With --compact-every: keep the newest N checkpoints (as hyper compact --keep-last).',
      min: 1,
      helpValue: '<n>',
      dependsOn: ['compact-every'],
      ...group,
    }),
    'compact-keep-within': duration({
      summary:
        'With --compact-every: keep the checkpoints made within this duration (as hyper compact --keep-within). Without either, no checkpoint is dropped.',
      minMs: 0,
      dependsOn: ['compact-every'],
      ...group,
    }),
    'compact-min-live': fraction({
      summary: `With --compact-every: move the live blocks of segments less live than this (default ${DEFAULT_MIN_LIVE}; 0 moves nothing).`,
      dependsOn: ['compact-every'],
      ...group,
    }),
    'compact-grace': duration({
      summary: `With --compact-every: delete only what nothing has read for this long (default ${formatDuration(DEFAULT_GRACE_MS)}).`,
      minMs: 0,
      dependsOn: ['compact-every'],
      ...group,
    }),
  };
}

/** The serving library's compaction schedule from the flags of `compactionFlags`. */
export function compactionOf(flags: {
  'compact-every'?: number | undefined;
  'compact-keep-last'?: number | undefined;
  'compact-keep-within'?: number | undefined;
  'compact-min-live'?: number | undefined;
  'compact-grace'?: number | undefined;
}): { compaction?: CompactionPolicy } {
  const every = flags['compact-every'];
  if (every === undefined) return {};
  return {
    compaction: {
      everyMs: every,
      ...(flags['compact-keep-last'] === undefined ? {} : { keepLast: flags['compact-keep-last'] }),
      ...(flags['compact-keep-within'] === undefined
        ? {}
        : { keepWithinMs: flags['compact-keep-within'] }),
      ...(flags['compact-min-live'] === undefined ? {} : { minLive: flags['compact-min-live'] }),
      ...(flags['compact-grace'] === undefined ? {} : { graceMs: flags['compact-grace'] }),
    },
  };
}

/** `--control-socket`: where the daemon's control API listens (`hyper daemon`, `map`, …). */
/**
 * `--metrics-port` and `--metrics-bind` of serve, daemon and replica serve: `what` says what
 * GET /metrics and GET /healthz report for that command.
 */
export function metricsFlags(what: string) {
  return {
    'metrics-port': Flags.integer({
      summary: `Serve Prometheus metrics (GET /metrics), a health check (GET /healthz: for alerts) and a liveness check (GET /livez: for probes that restart) on this TCP port (0 picks a free one; the URL is logged, and printed with --print-uri where there is one). ${what}`,
      min: 0,
      max: 65535,
    }),
    'metrics-bind': Flags.string({
      summary:
        'Address the metrics endpoint listens on (default 127.0.0.1; it has no authentication).',
      helpValue: '<address>',
      dependsOn: ['metrics-port'],
    }),
  };
}

/** Where the metrics are served, from those flags (undefined without --metrics-port). */
export function metricsListenOf(flags: {
  'metrics-port'?: number | undefined;
  'metrics-bind'?: string | undefined;
}): { port: number; host: string } | undefined {
  const port = flags['metrics-port'];
  return port === undefined ? undefined : { port, host: flags['metrics-bind'] ?? '127.0.0.1' };
}

export const controlSocket = Flags.string({
  summary:
    'Control socket of the daemon (default: $HYPER_CONTROL_SOCKET, $RUNTIME_DIRECTORY/control.sock under systemd, /run/hyper/control.sock as root, else $XDG_RUNTIME_DIR/hyper/control.sock).',
  helpValue: '<path>',
  env: 'HYPER_CONTROL_SOCKET',
  default: async () => defaultControlSocket(),
});

/** `--yes`: skip the confirmation of a destructive command (required without a terminal). */
export const yes = Flags.boolean({
  char: 'y',
  summary: 'Do not ask for confirmation (required when stdin is not a terminal).',
});

/** A volume URL argument, checked against the accepted forms and given a trailing slash. */
export const volumeUrl = Args.custom<string>({
  description: `Volume URL: ${URL_FORMS}.`,
  parse: async (input) => normalizeVolumeUrl(input, 'volume URL'),
});

/** A prefix URL argument (where volumes are listed). */
export const prefixUrl = Args.custom<string>({
  description: `Prefix URL: ${URL_FORMS}.`,
  parse: async (input) => normalizeVolumeUrl(input, 'prefix URL'),
});

export { CHECKPOINT_REF_FORMS, DURATION_FORMS, SIZE_FORMS, TIME_FORMS, URL_FORMS };

/**
 * The --size of a new volume, which must be given (as `rbd create` and `qemu-img create`
 * require): a usage error with an example otherwise. `--size 0` is accepted.
 */
export function requireSize(size: number | undefined, command: string, url: string): number {
  if (size !== undefined) return size;
  throw new HyperError(
    'invalid',
    'INVALID_ARGUMENT',
    `Missing required flag --size for ${command}`,
    {
      suggestion: `Give the volume's size, e.g. \`hyper ${command} ${url} --size 10G\` (volumes are thin: the size costs nothing until written; grow it later with \`hyper file set-len --size +SIZE\`).`,
    },
  );
}

/**
 * The snapshot name of `snapshot create|delete URL NAME`, also accepted (deprecated) as
 * `--name NAME`. When `creating`, a name that `--at`/`--to` would read as a checkpoint number
 * or a time (`42`, `2h`, `2026-01-31`) is refused: it could only be reached as `snapshot:NAME`.
 */
export function snapshotNameArg(
  arg: string | undefined,
  flag: string | undefined,
  command: string,
  url: string,
  options: { creating?: boolean } = {},
): string {
  if (arg !== undefined && flag !== undefined && arg !== flag) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Two snapshot names given: ${JSON.stringify(arg)} (argument) and ${JSON.stringify(flag)} (--name)`,
      { suggestion: `Give the name once, as the argument: hyper snapshot ${command} ${url} NAME` },
    );
  }
  const name = arg ?? flag;
  if (name === undefined) {
    throw new HyperError('invalid', 'INVALID_ARGUMENT', `Missing the snapshot name`, {
      suggestion: `Give it after the URL: hyper snapshot ${command} ${url} NAME`,
    });
  }
  if (options.creating) {
    let ref: CheckpointRef | undefined;
    try {
      ref = parseCheckpointRef(name);
    } catch {
      ref = undefined; // not a valid name: the store layer reports it with the rules
    }
    if (ref !== undefined && !('snapshot' in ref && ref.snapshot === name)) {
      const what = 'checkpoint' in ref ? 'a checkpoint number' : 'a time';
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `Invalid snapshot name ${JSON.stringify(name)}: --at and --to would read it as ${what}`,
        {
          suggestion: `Start the name with a letter, e.g. ${JSON.stringify(`v${name}`)} or ${JSON.stringify(`snap-${name}`)}.`,
        },
      );
    }
  }
  return name;
}
