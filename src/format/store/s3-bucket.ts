/**
 * Bucket-level settings of an S3 bucket, read for `hyper doctor`: region, versioning,
 * lifecycle rules, object lock, Block Public Access (bucket and account) and whether the
 * bucket policy makes it public. Read-only; nothing here is needed to use a volume.
 *
 * Every setting is read on its own and comes back as a `Probe`: its value, "not supported by
 * this endpoint" (S3-compatible stores such as Ceph RGW implement only part of the API), or
 * the HyperError it failed with (translated here, like every SDK error, by translateS3Error).
 */
import {
  GetBucketLifecycleConfigurationCommand,
  GetBucketLocationCommand,
  GetBucketPolicyStatusCommand,
  GetBucketVersioningCommand,
  GetObjectLockConfigurationCommand,
  GetPublicAccessBlockCommand,
  type LifecycleRule as SdkLifecycleRule,
} from '@aws-sdk/client-s3';
import {
  GetPublicAccessBlockCommand as GetAccountPublicAccessBlockCommand,
  S3ControlClient,
} from '@aws-sdk/client-s3-control';
import type { HyperError } from '../../errors.js';
import {
  createS3Client,
  quietSdkNodeVersionNotice,
  resolveEndpoint,
  resolveRegion,
  sdkTimeouts,
  translateS3Error,
  type S3StoreOptions,
} from './s3.js';

/** One setting: read, not implemented by the endpoint, or failed. */
export type Probe<T> =
  | { state: 'ok'; value: T }
  | { state: 'unsupported'; reason: string }
  | { state: 'error'; error: HyperError };

export interface PublicAccessBlock {
  blockPublicAcls: boolean;
  ignorePublicAcls: boolean;
  blockPublicPolicy: boolean;
  restrictPublicBuckets: boolean;
}

export interface LifecycleTransition {
  storageClass: string;
  days?: number;
  date?: Date;
}

/** A lifecycle rule, reduced to what decides whether it touches a volume's objects. */
export interface LifecycleRule {
  id: string;
  enabled: boolean;
  /** Key prefix the rule is limited to ('' = the whole bucket). */
  prefix: string;
  /** The rule only matches objects with these tags (hyper tags none). */
  tagFilter: boolean;
  /** Size bounds of the filter, in bytes. */
  objectSizeGreaterThan?: number;
  objectSizeLessThan?: number;
  /** Current versions expire (are deleted) after this many days or on this date. */
  expirationDays?: number;
  expirationDate?: Date;
  /** Only removes expired delete markers. */
  expiredObjectDeleteMarker?: boolean;
  transitions: LifecycleTransition[];
  /** Noncurrent versions expire this many days after they became noncurrent. */
  noncurrentExpirationDays?: number;
  noncurrentTransitions: LifecycleTransition[];
}

export interface ObjectLockSettings {
  enabled: boolean;
  /** The default retention applied to every new object, if any. */
  defaultRetention?: { mode: string; days?: number; years?: number };
}

export interface BucketSettings {
  /** The bucket's region as the endpoint reports it ('' when it does not say). */
  location: Probe<string>;
  versioning: Probe<'enabled' | 'suspended' | 'off'>;
  lifecycle: Probe<LifecycleRule[]>;
  objectLock: Probe<ObjectLockSettings | null>;
  /** null: no Block Public Access configuration on the bucket. */
  bucketPublicAccessBlock: Probe<PublicAccessBlock | null>;
  /** null: the bucket has no policy. */
  policyStatus: Probe<{ isPublic: boolean } | null>;
  /** Only read with an account id; null: none configured for the account. */
  accountPublicAccessBlock?: Probe<PublicAccessBlock | null>;
}

interface SdkError {
  name?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

const errName = (e: unknown): string => (e as SdkError).name ?? (e as SdkError).Code ?? '';
const errStatus = (e: unknown): number | undefined => (e as SdkError).$metadata?.httpStatusCode;

/** Errors meaning "this endpoint does not implement that request". */
function unsupported(e: unknown, customEndpoint: boolean): string | undefined {
  const name = errName(e);
  const status = errStatus(e);
  if (name === 'NotImplemented' || status === 501) return 'not implemented (501)';
  if (status === 405 || name === 'MethodNotAllowed') return 'method not allowed (405)';
  // An S3-compatible server that does not know the sub-resource tends to answer it as a plain
  // bucket or object request: a 400 or 404 of another kind than the one the API defines.
  if (customEndpoint && (status === 400 || name === 'InvalidArgument' || name === 'InvalidRequest'))
    return `rejected as invalid (${name || status})`;
  return undefined;
}

async function probe<T>(
  run: () => Promise<T>,
  absent: readonly string[],
  absentValue: T,
  ctx: { endpoint: string; bucket: string; url: string; custom: boolean },
): Promise<Probe<T>> {
  try {
    return { state: 'ok', value: await run() };
  } catch (e) {
    if (absent.includes(errName(e))) return { state: 'ok', value: absentValue };
    const why = unsupported(e, ctx.custom);
    if (why !== undefined) return { state: 'unsupported', reason: why };
    return { state: 'error', error: translateS3Error(e, { op: 'get', ...ctx }) };
  }
}

const toPab = (c?: {
  BlockPublicAcls?: boolean;
  IgnorePublicAcls?: boolean;
  BlockPublicPolicy?: boolean;
  RestrictPublicBuckets?: boolean;
}): PublicAccessBlock | null =>
  c
    ? {
        blockPublicAcls: c.BlockPublicAcls === true,
        ignorePublicAcls: c.IgnorePublicAcls === true,
        blockPublicPolicy: c.BlockPublicPolicy === true,
        restrictPublicBuckets: c.RestrictPublicBuckets === true,
      }
    : null;

function toRule(r: SdkLifecycleRule, i: number): LifecycleRule {
  const f = r.Filter;
  const and = f?.And;
  // The legacy top-level Prefix (deprecated by AWS, still used by RGW and older tools).
  const prefix = f?.Prefix ?? and?.Prefix ?? (r as { Prefix?: string }).Prefix ?? '';
  const greater = f?.ObjectSizeGreaterThan ?? and?.ObjectSizeGreaterThan;
  const less = f?.ObjectSizeLessThan ?? and?.ObjectSizeLessThan;
  const transition = (t: { StorageClass?: string; Days?: number; Date?: Date }) => ({
    storageClass: t.StorageClass ?? 'unknown',
    ...(t.Days === undefined ? {} : { days: t.Days }),
    ...(t.Date === undefined ? {} : { date: t.Date }),
  });
  return {
    id: r.ID ?? `rule ${i + 1}`,
    enabled: r.Status === 'Enabled',
    prefix,
    tagFilter: f?.Tag !== undefined || (and?.Tags?.length ?? 0) > 0,
    ...(greater === undefined ? {} : { objectSizeGreaterThan: Number(greater) }),
    ...(less === undefined ? {} : { objectSizeLessThan: Number(less) }),
    ...(r.Expiration?.Days === undefined ? {} : { expirationDays: r.Expiration.Days }),
    ...(r.Expiration?.Date === undefined ? {} : { expirationDate: r.Expiration.Date }),
    ...(r.Expiration?.ExpiredObjectDeleteMarker === undefined
      ? {}
      : { expiredObjectDeleteMarker: r.Expiration.ExpiredObjectDeleteMarker }),
    transitions: (r.Transitions ?? []).map(transition),
    ...(r.NoncurrentVersionExpiration?.NoncurrentDays === undefined
      ? {}
      : { noncurrentExpirationDays: r.NoncurrentVersionExpiration.NoncurrentDays }),
    noncurrentTransitions: (r.NoncurrentVersionTransitions ?? []).map((t) =>
      transition({
        ...(t.StorageClass === undefined ? {} : { StorageClass: t.StorageClass }),
        ...(t.NoncurrentDays === undefined ? {} : { Days: t.NoncurrentDays }),
      }),
    ),
  };
}

/** Where requests for these options go: the endpoint, the region, and whether it is custom. */
export function s3Target(options: Pick<S3StoreOptions, 'endpoint' | 'region'>): {
  endpoint: string;
  region: string;
  custom: boolean;
} {
  const endpoint = resolveEndpoint(options);
  const region = resolveRegion(options);
  return {
    endpoint: endpoint ?? `https://s3.${region}.amazonaws.com`,
    region,
    custom: endpoint !== undefined,
  };
}

export interface BucketSettingsOptions extends Pick<
  S3StoreOptions,
  'endpoint' | 'region' | 'credentials' | 'connectionTimeoutMs' | 'requestTimeoutMs'
> {
  /** The AWS account id, for the account-level Block Public Access (S3 Control). */
  accountId?: string;
  signal?: AbortSignal;
}

/** Read every bucket setting `hyper doctor` looks at; never throws for one setting. */
export async function readBucketSettings(
  bucket: string,
  options: BucketSettingsOptions = {},
): Promise<BucketSettings> {
  const { client, endpoint } = createS3Client({ ...options, maxAttempts: 3 });
  const custom = resolveEndpoint(options) !== undefined;
  const ctx = { endpoint, bucket, url: `s3://${bucket}/`, custom };
  const send = { abortSignal: options.signal };
  const Bucket = bucket;
  try {
    const [
      location,
      versioning,
      lifecycle,
      objectLock,
      bucketPublicAccessBlock,
      policyStatus,
      account,
    ] = await Promise.all([
      probe(
        async () =>
          (await client.send(new GetBucketLocationCommand({ Bucket }), send)).LocationConstraint ??
          '',
        [],
        '',
        ctx,
      ),
      probe(
        async () => {
          const s = (await client.send(new GetBucketVersioningCommand({ Bucket }), send)).Status;
          return s === 'Enabled' ? 'enabled' : s === 'Suspended' ? 'suspended' : 'off';
        },
        [],
        'off' as const,
        ctx,
      ),
      probe(
        async () =>
          (
            (await client.send(new GetBucketLifecycleConfigurationCommand({ Bucket }), send))
              .Rules ?? []
          ).map(toRule),
        ['NoSuchLifecycleConfiguration'],
        [],
        ctx,
      ),
      probe(
        async (): Promise<ObjectLockSettings | null> => {
          const c = (await client.send(new GetObjectLockConfigurationCommand({ Bucket }), send))
            .ObjectLockConfiguration;
          if (!c) return null;
          const d = c.Rule?.DefaultRetention;
          return {
            enabled: c.ObjectLockEnabled === 'Enabled',
            ...(d
              ? {
                  defaultRetention: {
                    mode: d.Mode ?? 'unknown',
                    ...(d.Days === undefined ? {} : { days: d.Days }),
                    ...(d.Years === undefined ? {} : { years: d.Years }),
                  },
                }
              : {}),
          };
        },
        ['ObjectLockConfigurationNotFoundError', 'ObjectLockConfigurationNotFound'],
        null,
        ctx,
      ),
      probe(
        async () =>
          toPab(
            (await client.send(new GetPublicAccessBlockCommand({ Bucket }), send))
              .PublicAccessBlockConfiguration,
          ),
        ['NoSuchPublicAccessBlockConfiguration'],
        null,
        ctx,
      ),
      probe(
        async () => {
          const s = (await client.send(new GetBucketPolicyStatusCommand({ Bucket }), send))
            .PolicyStatus;
          return { isPublic: s?.IsPublic === true };
        },
        ['NoSuchBucketPolicy'],
        null,
        ctx,
      ),
      options.accountId === undefined
        ? Promise.resolve(undefined)
        : readAccountPublicAccessBlock(options.accountId, options, ctx),
    ]);
    return {
      location,
      versioning,
      lifecycle,
      objectLock,
      bucketPublicAccessBlock,
      policyStatus,
      ...(account === undefined ? {} : { accountPublicAccessBlock: account }),
    };
  } finally {
    client.destroy();
  }
}

async function readAccountPublicAccessBlock(
  accountId: string,
  options: BucketSettingsOptions,
  ctx: { endpoint: string; bucket: string; url: string; custom: boolean },
): Promise<Probe<PublicAccessBlock | null>> {
  const region = resolveRegion(options);
  const endpoint = resolveEndpoint(options);
  quietSdkNodeVersionNotice();
  const client = new S3ControlClient({
    region,
    maxAttempts: 3,
    // (The S3 store's timeouts: without them a silent endpoint holds the request for good.)
    requestHandler: sdkTimeouts(options),
    // S3 Control's endpoint rules put the account id in front of the host name, which a
    // custom endpoint (an IP address, a single host) cannot take: send requests to it as is.
    ...(endpoint === undefined ? {} : { endpointProvider: () => ({ url: new URL(endpoint) }) }),
    ...(options.credentials ? { credentials: options.credentials } : {}),
  });
  try {
    const result = await probe(
      async () =>
        toPab(
          (
            await client.send(new GetAccountPublicAccessBlockCommand({ AccountId: accountId }), {
              abortSignal: options.signal,
            })
          ).PublicAccessBlockConfiguration,
        ),
      ['NoSuchPublicAccessBlockConfiguration'],
      null,
      ctx,
    );
    // A custom endpoint that answers the S3 Control path as if it were a bucket or key.
    if (
      ctx.custom &&
      result.state === 'error' &&
      (result.error.code === 'BUCKET_NOT_FOUND' || result.error.code === 'OBJECT_NOT_FOUND')
    ) {
      return { state: 'unsupported', reason: 'no S3 Control API at this endpoint' };
    }
    return result;
  } finally {
    client.destroy();
  }
}
