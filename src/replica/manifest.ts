/**
 * The replica's manifest: a small JSON object (key REPLICA_KEY) inside the replica volume.
 * It names the primary the volume mirrors (uuid, sizes) so a replica URL holding another
 * device's replica is refused, and lists the checkpoint ranges that are not crash-consistent
 * images (committed while regions were being resynced): `restore` refuses those, `status`
 * names the last consistent checkpoint before them.
 *
 * Only the replicator (holding the volume's lease) writes it; it is written before the first
 * checkpoint of an inconsistent range can be committed and again once the range is closed.
 */
import { z } from 'zod';
import { HyperError, isHyperError } from '../errors.js';
import { REPLICA_KEY } from '../format/keys.js';
import type { ObjectStore } from '../format/store/index.js';

const manifestSchema = z.strictObject({
  version: z.literal(1),
  uuid: z.string().uuid(),
  deviceSize: z.number().int().positive(),
  regionSize: z.number().int().positive(),
  dataBlockSize: z.number().int().positive(),
  createdAt: z.string(),
  /** Checkpoints `from` ≤ c < `to` (`to` null: still open) may mix regions of different times. */
  inconsistent: z.array(
    z.strictObject({
      from: z.number().int().positive(),
      to: z.number().int().positive().nullable(),
    }),
  ),
});

export type ReplicaManifest = z.infer<typeof manifestSchema>;

export async function readManifest(store: ObjectStore): Promise<ReplicaManifest | undefined> {
  let body: Buffer;
  try {
    ({ body } = await store.get(REPLICA_KEY));
  } catch (e) {
    if (isHyperError(e) && e.code === 'OBJECT_NOT_FOUND') return undefined;
    throw e;
  }
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    json = undefined;
  }
  const parsed = manifestSchema.safeParse(json);
  if (!parsed.success) {
    throw new HyperError(
      'data',
      'CORRUPT_OBJECT',
      `The replica manifest ${store.url}${REPLICA_KEY} is damaged`,
      {
        key: REPLICA_KEY,
        suggestion:
          'Restore it from a backup of the bucket, or format the primary again with a new replica.',
      },
    );
  }
  return parsed.data;
}

export async function writeManifest(store: ObjectStore, m: ReplicaManifest): Promise<void> {
  await store.put(REPLICA_KEY, Buffer.from(`${JSON.stringify(m, null, 2)}\n`));
}

/** True when checkpoint `c` falls in one of the manifest's inconsistent ranges. */
export function isInconsistent(m: ReplicaManifest, c: number): boolean {
  return m.inconsistent.some((r) => c >= r.from && (r.to === null || c < r.to));
}

/** The newest checkpoint ≤ `c` outside every inconsistent range (0: none). */
export function consistentAtOrBefore(m: ReplicaManifest, c: number): number {
  let x = c;
  for (;;) {
    const r = m.inconsistent.find((q) => x >= q.from && (q.to === null || x < q.to));
    if (r === undefined) return x;
    x = r.from - 1;
    if (x < 1) return 0;
  }
}
