/**
 * `hyper doctor`: is this bucket safe and fast enough to hold volumes? It checks, against the
 * prefix volumes would live under:
 *
 * - access: the credentials can list the prefix (and the region, on AWS);
 * - conditional writes really enforced: a create-only PUT (If-None-Match: *) of an existing
 *   key fails, a compare-and-swap (If-Match) with the current ETag succeeds and with a stale
 *   ETag or on a missing key fails. A store that ignores them lets two writers both commit a
 *   head: hyper's single-writer guarantee and its crash consistency depend on them;
 * - payload signing: whether PUT bodies are hashed into their signatures, and whether that
 *   leaves them unguarded (unsigned over plain HTTP);
 * - clock: this machine's clock against the store's (checkpoint times are the writer's);
 * - latency and throughput of PUT and GET per object size;
 * - this host's block checksums: whether CRC-32C runs on the processor's CRC32 instruction;
 * - bucket settings that cost or lose data: versioning (deleted segments stay stored as
 *   noncurrent versions), lifecycle rules that expire or transition objects under the prefix
 *   (volumes lose segments or their head), object lock, Block Public Access for the bucket
 *   and (with an account id) the account, and a bucket policy that makes the bucket public.
 *
 * Each check is ok, warn, fail or skip (not supported by the endpoint, or needs an input);
 * the report's status is the worst of them. The temporary objects live under
 * `.hyper-doctor-<run>/` in the prefix and are deleted before it returns.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { HyperError, toHyperError } from '../errors.js';
import { CRC32C_IMPLEMENTATION } from '../format/codec/binary.js';
import { doctorKey } from '../format/keys.js';
import { openStore, parseStoreUrl, type ObjectStore } from '../format/store/index.js';
import { storeTuningOf, type StoreTuning } from '../format/store/types.js';
import type {
  BucketSettings,
  LifecycleRule,
  Probe,
  PublicAccessBlock,
} from '../format/store/s3-bucket.js';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface DoctorCheck {
  /** Stable id, e.g. `conditional-create`. */
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  /** What to do about a warning or failure; null when there is nothing to do. */
  suggestion: string | null;
}

export interface DoctorTiming {
  op: 'put' | 'get';
  sizeBytes: number;
  samples: number;
  /** Median and slowest request, in seconds (rounded to 0.1 ms). */
  p50Seconds: number;
  maxSeconds: number;
  /** Bytes per second at the median latency. */
  bytesPerSecond: number;
}

export interface DoctorReport {
  url: string;
  endpoint: string;
  region: string;
  /** The worst status of any check ('skip' counts as ok). */
  status: 'ok' | 'warn' | 'fail';
  checks: DoctorCheck[];
  performance: DoctorTiming[];
  okCount: number;
  warnCount: number;
  failCount: number;
  skipCount: number;
}

/** Payload signing defaults to the environment, else auto; the rest as StoreOptions say. */
export interface DoctorOptions extends StoreTuning {
  endpoint?: string;
  region?: string;
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** AWS account id, for the account-level Block Public Access check. */
  accountId?: string;
  /** Requests per operation and size in the latency test (0 skips it; default 3). */
  samples?: number;
  /** Object sizes of the latency test (default 4 KiB, 1 MiB, 8 MiB). */
  sizes?: number[];
  signal?: AbortSignal;
}

export const DOCTOR_SIZES = [4096, 1 << 20, 8 << 20];

/** Exit status of a report: which checks decide it is in the README ("hyper doctor"). */
export function worstStatus(checks: readonly DoctorCheck[]): DoctorReport['status'] {
  if (checks.some((c) => c.status === 'fail')) return 'fail';
  if (checks.some((c) => c.status === 'warn')) return 'warn';
  return 'ok';
}

/** Seconds as milliseconds for messages (0.1 ms precision). */
export const msOf = (s: number): number => Math.round(s * 10_000) / 10;

const check = (
  id: string,
  title: string,
  status: CheckStatus,
  detail: string,
  suggestion?: string,
): DoctorCheck => ({ id, title, status, detail, suggestion: suggestion ?? null });

/** Run every check against `url` (an s3:// prefix). Throws only for a bad URL or an abort. */
export async function runDoctor(url: string, options: DoctorOptions = {}): Promise<DoctorReport> {
  const parsed = parseStoreUrl(url);
  if (parsed.scheme !== 's3') {
    throw new HyperError('invalid', 'INVALID_URL', `hyper doctor checks S3 buckets, not ${url}`, {
      suggestion: 'Give the s3://bucket/prefix/ where volumes are (or will be) kept.',
    });
  }
  // The S3-only modules load the AWS SDK: imported here, not at start-up.
  const { readBucketSettings, s3Target } = await import('../format/store/s3-bucket.js');
  const { signsPayload } = await import('../format/store/s3.js');
  const target = s3Target(options);
  const storeOptions = {
    ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
    ...(options.region === undefined ? {} : { region: options.region }),
    ...(options.credentials === undefined ? {} : { credentials: options.credentials }),
    ...storeTuningOf(options),
  };
  const store = await openStore(url, storeOptions);
  const checks: DoctorCheck[] = [];
  const performanceRows: DoctorTiming[] = [];
  try {
    const access = await checkAccess(store, target);
    checks.push(access);
    if (access.status === 'fail') {
      for (const [id, title] of LATER_CHECKS) {
        checks.push(check(id, title, 'skip', 'not checked: the prefix cannot be listed'));
      }
    } else {
      const runId = randomBytes(8).toString('hex');
      checks.push(...(await checkConditionalWrites(store, runId, options.signal)));
      checks.push(
        payloadSigningCheck(signsPayload(storeOptions, target.endpoint), target.endpoint),
      );
      checks.push(await checkClock(store, runId, options.signal));
      const perf = await measure(store, runId, options);
      checks.push(perf.check);
      performanceRows.push(...perf.rows);
      const settings = await readBucketSettings(parsed.bucket, {
        ...storeOptions,
        ...(options.accountId === undefined ? {} : { accountId: options.accountId }),
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      });
      checks.push(...bucketChecks(settings, parsed.prefix, target, options.accountId));
      checks.push(checksumCheck());
    }
  } finally {
    await store.close();
  }
  const counts: Record<CheckStatus, number> = { ok: 0, warn: 0, fail: 0, skip: 0 };
  for (const c of checks) counts[c.status]++;
  return {
    url: store.url,
    endpoint: target.endpoint,
    region: target.region,
    status: worstStatus(checks),
    checks,
    performance: performanceRows,
    okCount: counts.ok,
    warnCount: counts.warn,
    failCount: counts.fail,
    skipCount: counts.skip,
  };
}

const CHECKSUMS_TITLE = 'Block checksums (CRC-32C)';

const LATER_CHECKS: [string, string][] = [
  ['conditional-create', 'Create-only writes (If-None-Match)'],
  ['conditional-cas', 'Compare-and-swap (If-Match)'],
  ['payload-signing', 'Payload signing'],
  ['clock', 'Clock'],
  ['performance', 'Latency and throughput'],
  ['region', 'Region'],
  ['versioning', 'Versioning'],
  ['lifecycle', 'Lifecycle rules'],
  ['object-lock', 'Object lock'],
  ['bucket-public-access-block', 'Block Public Access (bucket)'],
  ['bucket-policy-public', 'Bucket policy'],
  ['account-public-access-block', 'Block Public Access (account)'],
  ['checksums', CHECKSUMS_TITLE],
];

async function checkAccess(
  store: ObjectStore,
  target: { endpoint: string; region: string },
): Promise<DoctorCheck> {
  const title = 'Credentials and access';
  try {
    for await (const _page of store.list('', { delimiter: '/' })) break;
    return check(
      'access',
      title,
      'ok',
      `listed ${store.url} at ${target.endpoint} (region ${target.region})`,
    );
  } catch (e) {
    const err = toHyperError(e);
    if (err.code === 'ABORTED') throw err;
    return check('access', title, 'fail', `${err.code}: ${err.message}`, err.suggestion);
  }
}

/** Run `op`; the HyperError it failed with, or undefined if it succeeded. */
async function failure(op: () => Promise<unknown>): Promise<HyperError | undefined> {
  try {
    await op();
    return undefined;
  } catch (e) {
    const err = toHyperError(e);
    if (err.code === 'ABORTED') throw err;
    return err;
  }
}

const UNSAFE =
  'Do not keep volumes here: two writers could both commit and a crash could lose a checkpoint. Use AWS S3, Ceph RGW, or another store that implements If-None-Match and If-Match on PUT.';

async function checkConditionalWrites(
  store: ObjectStore,
  runId: string,
  signal?: AbortSignal,
): Promise<DoctorCheck[]> {
  const s = signal ? { signal } : {};
  const createKey = doctorKey(runId, 'create-only');
  const casKey = doctorKey(runId, 'cas');
  const missingKey = doctorKey(runId, 'missing');
  const out: DoctorCheck[] = [];
  try {
    // Create-only, twice: the second must be refused and leave the first content in place.
    let title = 'Create-only writes (If-None-Match)';
    let err = await failure(() =>
      store.put(createKey, Buffer.from('first'), { ...s, ifNoneMatch: true }),
    );
    if (err) {
      out.push(check('conditional-create', title, 'fail', `first PUT failed: ${err.message}`));
    } else {
      err = await failure(() =>
        store.put(createKey, Buffer.from('second'), { ...s, ifNoneMatch: true }),
      );
      if (err === undefined) {
        const now = await store.get(createKey, s).then(
          (r) => r.body.toString(),
          () => '?',
        );
        out.push(
          check(
            'conditional-create',
            title,
            'fail',
            `a second create-only PUT of an existing key succeeded (${now === 'second' ? 'it overwrote the object' : 'the object was not replaced'}): the store ignores If-None-Match`,
            UNSAFE,
          ),
        );
      } else if (err.code === 'OBJECT_EXISTS') {
        out.push(
          check('conditional-create', title, 'ok', 'a second create-only PUT was refused (412)'),
        );
      } else {
        out.push(check('conditional-create', title, 'fail', `${err.code}: ${err.message}`, UNSAFE));
      }
    }

    // Compare-and-swap: with the current ETag it succeeds, with a stale one (or on a missing
    // key) it must be refused.
    title = 'Compare-and-swap (If-Match)';
    const problems: string[] = [];
    let stale: string | undefined;
    let current: string | undefined;
    err = await failure(async () => {
      stale = (await store.put(casKey, Buffer.from('v1'), s)).etag;
    });
    if (err || stale === undefined) {
      problems.push(`PUT failed: ${err?.message ?? 'no ETag'}`);
    } else {
      const prev = stale;
      err = await failure(async () => {
        current = (await store.put(casKey, Buffer.from('v2'), { ...s, ifMatch: prev })).etag;
      });
      if (err) problems.push(`a CAS with the current ETag was refused (${err.code})`);
      if (current !== undefined && current === stale) {
        problems.push('the ETag did not change with the content');
      } else if (current !== undefined) {
        err = await failure(() => store.put(casKey, Buffer.from('v3'), { ...s, ifMatch: prev }));
        if (err === undefined) problems.push('a CAS with a stale ETag succeeded');
        else if (err.code !== 'PRECONDITION_FAILED')
          problems.push(`a CAS with a stale ETag failed with ${err.code}: ${err.message}`);
      }
    }
    err = await failure(() =>
      store.put(missingKey, Buffer.from('x'), { ...s, ifMatch: stale ?? '0'.repeat(32) }),
    );
    if (err === undefined) problems.push('a CAS on a missing key succeeded');
    else if (err.code !== 'PRECONDITION_FAILED')
      problems.push(`a CAS on a missing key failed with ${err.code}`);
    out.push(
      problems.length === 0
        ? check(
            'conditional-cas',
            title,
            'ok',
            'CAS with the current ETag succeeded; with a stale ETag and on a missing key it was refused',
          )
        : check('conditional-cas', title, 'fail', problems.join('; '), UNSAFE),
    );
  } finally {
    const left = await failure(() => store.delete([createKey, casKey, missingKey], s));
    if (left) {
      out.push(
        check(
          'cleanup',
          'Temporary objects',
          'warn',
          `could not delete ${store.url}${createKey} and the keys next to it: ${left.message}`,
          'Delete them by hand; they are not part of any volume.',
        ),
      );
    }
  }
  return out;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};
const round1 = (x: number): number => Math.round(x * 10) / 10;

/** Thresholds of the latency check: beyond them a volume works, but slowly. */
const SLOW_SMALL_MS = 500;
const SLOW_BYTES_PER_SECOND = 4 << 20;

async function measure(
  store: ObjectStore,
  runId: string,
  options: DoctorOptions,
): Promise<{ check: DoctorCheck; rows: DoctorTiming[] }> {
  const title = 'Latency and throughput';
  const samples = options.samples ?? 3;
  if (samples <= 0) {
    return { check: check('performance', title, 'skip', 'skipped (--samples 0)'), rows: [] };
  }
  const s = options.signal ? { signal: options.signal } : {};
  const rows: DoctorTiming[] = [];
  const keys: string[] = [];
  try {
    for (const size of options.sizes ?? DOCTOR_SIZES) {
      const body = randomBytes(size);
      const put: number[] = [];
      const get: number[] = [];
      for (let i = 0; i < samples; i++) {
        const key = doctorKey(runId, `perf-${size}-${i}`);
        keys.push(key);
        let t = performance.now();
        await store.put(key, body, s);
        put.push(performance.now() - t);
        t = performance.now();
        const r = await store.get(key, s);
        get.push(performance.now() - t);
        if (!r.body.equals(body)) {
          throw new HyperError(
            'data',
            'CHECKSUM_MISMATCH',
            `GET returned other bytes than the PUT wrote`,
            {
              key,
            },
          );
        }
      }
      for (const [op, ms] of [
        ['put', put],
        ['get', get],
      ] as const) {
        const p50 = median(ms);
        rows.push({
          op,
          sizeBytes: size,
          samples,
          p50Seconds: round1(p50) / 1000,
          maxSeconds: round1(Math.max(...ms)) / 1000,
          bytesPerSecond: Math.round(size / (Math.max(p50, 0.001) / 1000)),
        });
      }
    }
  } catch (e) {
    const err = toHyperError(e);
    if (err.code === 'ABORTED') throw err;
    return { check: check('performance', title, 'fail', `${err.code}: ${err.message}`), rows };
  } finally {
    await store.delete(keys, s).catch(() => undefined);
  }
  const slow: string[] = [];
  const smallest = Math.min(...rows.map((r) => r.sizeBytes));
  const largest = Math.max(...rows.map((r) => r.sizeBytes));
  for (const r of rows) {
    if (r.sizeBytes === smallest && r.p50Seconds * 1000 > SLOW_SMALL_MS)
      slow.push(`${r.op.toUpperCase()} of ${r.sizeBytes} B takes ${msOf(r.p50Seconds)} ms`);
    if (r.sizeBytes === largest && largest >= 1 << 20 && r.bytesPerSecond < SLOW_BYTES_PER_SECOND)
      slow.push(
        `${r.op.toUpperCase()} of ${r.sizeBytes >> 20} MiB runs at ${(r.bytesPerSecond / (1 << 20)).toFixed(1)} MiB/s`,
      );
  }
  const summary = rows
    .filter((r) => r.sizeBytes === smallest || r.sizeBytes === largest)
    .map((r) => `${r.op.toUpperCase()} ${label(r.sizeBytes)} ${msOf(r.p50Seconds)} ms`)
    .join(', ');
  return {
    check:
      slow.length === 0
        ? check('performance', title, 'ok', `median ${summary} (${samples} samples each)`)
        : check(
            'performance',
            title,
            'warn',
            `slow: ${slow.join('; ')}`,
            'Every flush writes a segment and the head: volumes on this store will be slow. Use an endpoint closer to the host.',
          ),
    rows,
  };
}

const label = (n: number): string =>
  n >= 1 << 20 && n % (1 << 20) === 0
    ? `${n >> 20} MiB`
    : n >= 1024 && n % 1024 === 0
      ? `${n >> 10} KiB`
      : `${n} B`;

/**
 * Whether PUT bodies are hashed into their signatures (the PUTs of the checks above were sent
 * this way, so a store refusing UNSIGNED-PAYLOAD failed them): unsigned over plain HTTP warns,
 * as nothing then guards a body in transit.
 */
/** Clock offsets up to this are fine: checkpoint times are shown and picked in seconds. */
const CLOCK_WARN_MS = 5000;

/**
 * This machine's clock against the store's: the Last-Modified the store gives an object it
 * just stored (whole seconds) against the local time around the PUT. Checkpoint times are
 * the writer's clock (a restore or a serve `--at TIME`, compaction's keep-within go by
 * them), and file:// leases compare the holder's clock with the reader's (S3 leases go by
 * the store's clock, lease.ts `judgeLease`). Data stays safe (fencing does not depend on
 * clocks): a warning, not a failure.
 */
async function checkClock(
  store: ObjectStore,
  runId: string,
  signal?: AbortSignal,
): Promise<DoctorCheck> {
  const title = 'Clock';
  const key = doctorKey(runId, 'clock');
  const s = signal ? { signal } : {};
  try {
    const t0 = Date.now();
    await store.put(key, Buffer.from('clock'), s);
    const t1 = Date.now();
    const meta = await store.head(key, s);
    if (!meta) return check('clock', title, 'skip', 'the object just stored is not there');
    // The store stamped it within [mtime, mtime + 1 s), sometime between t0 and t1 here.
    const stored = meta.lastModified.getTime();
    const lo = stored - t1;
    const hi = stored + 1000 - t0;
    const offset = lo > 0 ? lo : hi < 0 ? hi : 0;
    const secs = (Math.abs(offset) / 1000).toFixed(1);
    if (Math.abs(offset) <= CLOCK_WARN_MS) {
      return check(
        'clock',
        title,
        'ok',
        offset === 0
          ? "within a second of the store's"
          : `${secs} s ${offset > 0 ? 'behind' : 'ahead of'} the store's`,
      );
    }
    return check(
      'clock',
      title,
      'warn',
      `this machine's clock is ${secs} s ${offset > 0 ? 'behind' : 'ahead of'} the store's (checkpoint times, which --at TIME and --keep-within go by, are the writer's clock)`,
      'Synchronize the clock (timedatectl status; run chrony or systemd-timesyncd) on every host that serves volumes.',
    );
  } catch (e) {
    return check('clock', title, 'skip', `could not compare: ${toHyperError(e).message}`);
  } finally {
    await store.delete([key], s).catch(() => undefined);
  }
}

/** This host: how the CRC-32C of every block written and read is computed. */
function checksumCheck(): DoctorCheck {
  const title = CHECKSUMS_TITLE;
  if (CRC32C_IMPLEMENTATION === 'sse4.2')
    return check('checksums', title, 'ok', "the processor's CRC32 instruction (SSE 4.2)");
  if (process.arch !== 'x64')
    return check(
      'checksums',
      title,
      'ok',
      `a table walk (no CRC32 instruction used on ${process.arch})`,
    );
  return check(
    'checksums',
    title,
    'warn',
    "a table walk: hyper's native addon is not built, or this processor lacks SSE 4.2; every block written and read costs about twice the CPU",
    'Build the addon where hyper is installed: "npm run build:native" in its directory (needs g++, make and python3).',
  );
}

function payloadSigningCheck(signs: boolean, endpoint: string): DoctorCheck {
  const title = 'Payload signing';
  const tls = /^https:/i.test(endpoint);
  if (signs && !tls) {
    return check(
      'payload-signing',
      title,
      'ok',
      'PUT bodies are signed (plain HTTP: the signature guards them)',
    );
  }
  if (!signs && tls) {
    return check(
      'payload-signing',
      title,
      'ok',
      'PUT bodies are not signed: TLS guards them in transit',
    );
  }
  if (signs) {
    return check(
      'payload-signing',
      title,
      'ok',
      'PUT bodies are signed over TLS as well (a SHA-256 of every byte written, here and on the server)',
    );
  }
  return check(
    'payload-signing',
    title,
    'warn',
    'PUT bodies are sent unsigned over plain HTTP: a body changed in transit would be stored as it is',
    'Use an https:// endpoint, or leave HYPER_S3_PAYLOAD_SIGNING (payloadSigning in the configuration file) at auto unless the link is trusted.',
  );
}

/** A probe that the endpoint does not support, or that failed: a skip or a warning. */
function notRead<T>(id: string, title: string, p: Probe<T>): DoctorCheck | undefined {
  if (p.state === 'unsupported')
    return check(id, title, 'skip', `not supported by this endpoint (${p.reason})`);
  if (p.state === 'error')
    return check(
      id,
      title,
      'warn',
      `could not be read: ${p.error.code}: ${p.error.message}`,
      p.error.suggestion,
    );
  return undefined;
}

/** The status line of a check, for a judge that knows only the verdict. */
type Verdict = (status: CheckStatus, detail: string, suggestion?: string) => DoctorCheck;

/**
 * The check of one probed bucket setting: skipped or warned about when it could not be read,
 * else what `judge` makes of its value.
 */
function probed<T>(
  id: string,
  title: string,
  p: Probe<T>,
  judge: (value: T, verdict: Verdict) => DoctorCheck,
): DoctorCheck {
  if (p.state !== 'ok') return notRead(id, title, p) as DoctorCheck;
  return judge(p.value, (status, detail, suggestion) =>
    check(id, title, status, detail, suggestion),
  );
}

/** Does a lifecycle rule limited to `rulePrefix` reach objects under the volume prefix? */
const reaches = (rulePrefix: string, prefix: string): boolean =>
  prefix.startsWith(rulePrefix) || rulePrefix.startsWith(prefix);

/** Storage classes whose objects cannot be read without a restore first. */
const ARCHIVE = new Set(['GLACIER', 'DEEP_ARCHIVE']);

function lifecycleCheck(
  rules: LifecycleRule[],
  prefix: string,
  versioning: 'enabled' | 'suspended' | 'off' | undefined,
): DoctorCheck {
  const id = 'lifecycle';
  const title = 'Lifecycle rules';
  const applying = rules.filter((r) => r.enabled && !r.tagFilter && reaches(r.prefix, prefix));
  const where = (r: LifecycleRule) =>
    `rule "${r.id}"${r.prefix ? ` (prefix ${r.prefix})` : ' (whole bucket)'}`;
  const danger: string[] = [];
  const costly: string[] = [];
  for (const r of applying) {
    if (r.expirationDays !== undefined || r.expirationDate !== undefined) {
      danger.push(
        `${where(r)} expires objects ${r.expirationDays !== undefined ? `after ${r.expirationDays} days` : `on ${r.expirationDate?.toISOString().slice(0, 10)}`}`,
      );
    }
    for (const t of r.transitions) {
      const when = t.days !== undefined ? `after ${t.days} days` : 'on a date';
      if (ARCHIVE.has(t.storageClass))
        danger.push(
          `${where(r)} moves objects to ${t.storageClass} ${when} (unreadable without a restore)`,
        );
      else
        costly.push(
          `${where(r)} moves objects to ${t.storageClass} ${when} (retrieval fees, minimum storage duration)`,
        );
    }
  }
  if (danger.length > 0) {
    return check(
      id,
      title,
      'fail',
      danger.concat(costly).join('; '),
      `A volume's head and old segments are never rewritten: such a rule deletes or archives live data. Exclude the volume prefix ${prefix || '(the bucket)'} from the rule, or keep volumes elsewhere.`,
    );
  }
  if (costly.length > 0) {
    return check(
      id,
      title,
      'warn',
      costly.join('; '),
      'Transitions of live segments make reads slower and compaction costlier; exclude the volume prefix from the rule.',
    );
  }
  const noncurrent = applying.some((r) => r.noncurrentExpirationDays !== undefined);
  const detail =
    rules.length === 0
      ? 'none'
      : `${rules.length} rule${rules.length === 1 ? '' : 's'}, none expire or move current objects under the prefix${noncurrent && versioning !== 'off' ? ' (noncurrent versions expire: good)' : ''}`;
  return check(id, title, 'ok', detail);
}

function publicAccessCheck(
  id: string,
  title: string,
  p: Probe<PublicAccessBlock | null>,
): DoctorCheck {
  return probed(id, title, p, (v, verdict) => {
    if (v === null)
      return verdict(
        'warn',
        'no Block Public Access configuration: a policy or ACL could make volumes public',
        'Enable all four Block Public Access settings (aws s3api put-public-access-block).',
      );
    const off = Object.entries(v)
      .filter(([, on]) => !on)
      .map(([k]) => k);
    return off.length === 0
      ? verdict('ok', 'all four settings on')
      : verdict('warn', `off: ${off.join(', ')}`, 'Enable all four Block Public Access settings.');
  });
}

export function bucketChecks(
  b: BucketSettings,
  prefix: string,
  target: { region: string; custom: boolean },
  accountId: string | undefined,
): DoctorCheck[] {
  const out: DoctorCheck[] = [];

  // Region: on AWS the bucket's region must be the one requests are signed for.
  out.push(
    probed('region', 'Region', b.location, (loc, verdict) => {
      // AWS answers '' for us-east-1 and 'EU' for the oldest eu-west-1 buckets.
      const region = loc === '' ? 'us-east-1' : loc === 'EU' ? 'eu-west-1' : loc;
      if (target.custom)
        return verdict('ok', `bucket location "${loc}" (requests use ${target.region})`);
      if (region === target.region) return verdict('ok', region);
      return verdict(
        'warn',
        `the bucket is in ${region}, requests are signed for ${target.region}`,
        `Use --region ${region} (or AWS_REGION).`,
      );
    }),
  );

  const versioning = b.versioning.state === 'ok' ? b.versioning.value : undefined;
  out.push(
    probed('versioning', 'Versioning', b.versioning, (v, verdict) => {
      const expires =
        b.lifecycle.state === 'ok' &&
        b.lifecycle.value.some(
          (r) =>
            r.enabled &&
            !r.tagFilter &&
            r.noncurrentExpirationDays !== undefined &&
            prefix.startsWith(r.prefix),
        );
      if (v === 'off') return verdict('ok', 'off');
      if (expires)
        return verdict('ok', `${v}; a lifecycle rule expires noncurrent versions under the prefix`);
      return verdict(
        'warn',
        `${v}: segments that compaction or delete remove stay stored (and billed) as noncurrent versions`,
        'Add a lifecycle rule with NoncurrentVersionExpiration for the volume prefix, or use a bucket without versioning.',
      );
    }),
  );

  out.push(
    probed('lifecycle', 'Lifecycle rules', b.lifecycle, (rules) =>
      lifecycleCheck(rules, prefix, versioning),
    ),
  );

  out.push(
    probed('object-lock', 'Object lock', b.objectLock, (l, verdict) => {
      if (!l || !l.enabled) return verdict('ok', 'off');
      if (!l.defaultRetention) return verdict('ok', 'enabled, no default retention');
      const r = l.defaultRetention;
      const period = r.days !== undefined ? `${r.days} days` : `${r.years ?? '?'} years`;
      return verdict(
        'warn',
        `default retention ${r.mode} for ${period}: every segment written stays stored that long, whatever compaction deletes`,
        'Keep volumes in a bucket without default retention; protect them with snapshots instead.',
      );
    }),
  );

  out.push(
    publicAccessCheck(
      'bucket-public-access-block',
      'Block Public Access (bucket)',
      b.bucketPublicAccessBlock,
    ),
  );

  out.push(
    probed('bucket-policy-public', 'Bucket policy', b.policyStatus, (v, verdict) => {
      if (v === null) return verdict('ok', 'no bucket policy');
      if (!v.isPublic) return verdict('ok', 'not public');
      return verdict(
        'fail',
        'the bucket policy makes the bucket public: anyone may read the volumes',
        'Remove the public statements from the bucket policy and enable Block Public Access.',
      );
    }),
  );

  // Account-level Block Public Access (S3 Control needs the account id).
  if (b.accountPublicAccessBlock === undefined || accountId === undefined) {
    out.push(
      check(
        'account-public-access-block',
        'Block Public Access (account)',
        'skip',
        'needs --account-id',
      ),
    );
  } else {
    out.push(
      publicAccessCheck(
        'account-public-access-block',
        'Block Public Access (account)',
        b.accountPublicAccessBlock,
      ),
    );
  }
  return out;
}
