/**
 * The shapes the daemon reads from outside — control requests, its state file, its config
 * file — as zod schemas: anything that does not match is refused as a whole with a message
 * naming the field, before the daemon acts on any of it.
 */
import { z } from 'zod';
import { HyperError } from '../errors.js';
import { zodProblems } from '../json-file.js';

/** Export names: what NBD clients ask for (`nbd://host/NAME`); no slashes at the ends. */
const exportName = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[A-Za-z0-9._~-][A-Za-z0-9._~/-]*$/, 'letters, digits, ".", "_", "~", "-" and "/"')
  .refine((n) => !n.endsWith('/') && !n.split('/').includes('..'), 'no trailing "/" or ".."');

const url = z.string().min(1).max(4096);

/** A checkpoint reference as JSON (`--at` resolved by the client). */
export const checkpointRefJson = z.union([
  z.strictObject({ checkpoint: z.number().int().nonnegative() }),
  z.strictObject({ snapshot: z.string().min(1).max(255) }),
  z.strictObject({ time: z.iso.datetime({ offset: true }) }),
]);

/** What is remembered of a mapping: enough to map it again after a restart. */
export const exportSpec = z.strictObject({
  url,
  name: exportName,
  readOnly: z.boolean().optional(),
  at: checkpointRefJson.optional(),
  walUrl: url.optional(),
  /** When writes are logged (OpenOptions.walAck). */
  walAck: z.enum(['write', 'flush']).optional(),
  endpoint: url.optional(),
  region: z.string().min(1).max(64).optional(),
});
export type ExportSpec = z.infer<typeof exportSpec>;

/** POST /v1/exports. */
export const mapRequest = z.strictObject({
  ...exportSpec.shape,
  name: exportName.optional(),
  force: z.boolean().optional(),
  wait: z.boolean().optional(),
});
export type MapRequest = z.infer<typeof mapRequest>;

/**
 * Compact a mapped export's volume now, online (POST /v1/exports/NAME/compact): the policy of
 * `hyper compact`, in milliseconds and a fraction.
 */
export const compactRequest = z.strictObject({
  keepLast: z.number().int().min(1).optional(),
  keepWithinMs: z.number().int().min(0).optional(),
  minLive: z.number().min(0).max(1).optional(),
  graceMs: z.number().int().min(0).optional(),
  dryRun: z.boolean().optional(),
  /** The volume the caller means (its uuid): refused if the export serves another one. */
  volumeUuid: z
    .string()
    .regex(/^[0-9a-f]{32}$/)
    .optional(),
});
export type CompactRequest = z.infer<typeof compactRequest>;

/** Commit what a mapped export acknowledged (POST /v1/exports/NAME/flush). */
export const flushRequest = z.strictObject({
  volumeUuid: compactRequest.shape.volumeUuid,
});

/** Grow a mapped export's volume (POST /v1/exports/NAME/resize). */
export const resizeRequest = z.strictObject({
  size: z.number().int().min(0),
  volumeUuid: compactRequest.shape.volumeUuid,
});

/** The state file: the exports to map again at start, and where each came from. */
export const stateFile = z.strictObject({
  version: z.literal(1),
  exports: z.array(z.strictObject({ ...exportSpec.shape, source: z.enum(['control', 'config']) })),
});
export type StateFile = z.infer<typeof stateFile>;
export type StateEntry = StateFile['exports'][number];

/** The config file (`--config`): exports the daemon maps at start and on reload. */
export const configFile = z.strictObject({
  exports: z.array(exportSpec.extend({ name: exportName.optional() })).default([]),
});
export type ConfigFile = z.infer<typeof configFile>;

/** Validate `value` or throw INVALID_ARGUMENT naming the first problems and `what` it was. */
export function parseOr<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new HyperError('invalid', 'INVALID_ARGUMENT', `Invalid ${what}: ${zodProblems(r.error)}`);
}

/** The default export name of a volume URL: the last segment of its path. */
export function nameOfUrl(u: string): string {
  return u.replace(/\/+$/, '').split('/').pop() ?? '';
}
