/**
 * The configuration file's schema (zod). Its own module so that zod is loaded only when a
 * configuration file exists (it costs ~0.1 s of start-up).
 */
import { z } from 'zod';
import { ENDPOINT_RE, MAX_ATTEMPTS_LIMIT } from './config.js';

const endpoint = z
  .string()
  .regex(ENDPOINT_RE, 'expected http(s)://host[:port]')
  .describe('S3 endpoint URL');
const region = z.string().min(1);
const awsProfile = z.string().min(1);
/** Whether S3 PUT bodies are signed (StoreOptions.payloadSigning). */
const payloadSigning = z.enum(['auto', 'on', 'off']);
/** A store timeout: a duration like 5s or 500ms (checked when settings are resolved). */
const timeout = z.string().min(1);
/** Attempts per store request, first included. */
const maxAttempts = z.number().int().min(1).max(MAX_ATTEMPTS_LIMIT);
const flagValue = z.union([z.string(), z.number(), z.boolean()]);
/** Command id (`compact`, `file import`, `*` for every command) → flag name → value. */
const defaults = z.record(z.string().min(1), z.record(z.string().min(1), flagValue));

const profileSchema = z.strictObject({
  endpoint: endpoint.optional(),
  region: region.optional(),
  awsProfile: awsProfile.optional(),
  payloadSigning: payloadSigning.optional(),
  connectTimeout: timeout.optional(),
  idleTimeout: timeout.optional(),
  maxAttempts: maxAttempts.optional(),
  defaults: defaults.optional(),
});

export const configSchema = z.strictObject({
  /** The profile used when neither --profile nor HYPER_PROFILE names one. */
  profile: z.string().min(1).optional(),
  endpoint: endpoint.optional(),
  region: region.optional(),
  awsProfile: awsProfile.optional(),
  payloadSigning: payloadSigning.optional(),
  connectTimeout: timeout.optional(),
  idleTimeout: timeout.optional(),
  maxAttempts: maxAttempts.optional(),
  defaults: defaults.optional(),
  profiles: z.record(z.string().min(1), profileSchema).optional(),
});

export type ConfigFile = z.infer<typeof configSchema>;
export type ProfileSection = z.infer<typeof profileSchema>;
