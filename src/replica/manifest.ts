/**
 * The replica's manifest: a small JSON object (key REPLICA_KEY) inside the replica volume.
 * It names the primary the volume mirrors (uuid, sizes) so a replica URL holding another
 * device's replica is refused, and lists the checkpoint ranges that are not crash-consistent
 * images (committed while regions were being resynced): `restore` refuses those, `status`
 * names the last consistent checkpoint before them.
 *
 * Only the replicator (holding the volume's lease) writes it; it is written before the first
 * checkpoint of an inconsistent range can be committed and again once the range is closed.
 * Writes are fenced like the head: each records the writer's lease epoch and is a
 * compare-and-swap on the manifest's ETag, so a replicator whose lease was taken over (a
 * newer epoch stamped the manifest) fails with FENCED instead of overwriting it.
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
  /** Lease epoch of the replicator that wrote it last (absent: written at format). */
  writerEpoch: z.number().int().nonnegative().optional(),
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
  return (await readTagged(store))?.manifest;
}

/** The manifest and the ETag a compare-and-swap of it needs. */
export interface TaggedManifest {
  manifest: ReplicaManifest;
  etag: string;
}

export async function readTagged(store: ObjectStore): Promise<TaggedManifest | undefined> {
  let body: Buffer;
  let etag: string;
  try {
    ({ body, etag } = await store.get(REPLICA_KEY));
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
  return { manifest: parsed.data, etag };
}

const encode = (m: ReplicaManifest): Buffer => Buffer.from(`${JSON.stringify(m, null, 2)}\n`);

/** Write a new replica's manifest (create-only: a key that exists is OBJECT_EXISTS). */
export async function createManifest(store: ObjectStore, m: ReplicaManifest): Promise<void> {
  await store.put(REPLICA_KEY, encode(m), { ifNoneMatch: true });
}

/**
 * Apply `change` to the manifest as the writer of lease epoch `epoch` and write it by
 * compare-and-swap, starting from `known` (a copy read earlier) or a fresh read. A lost race
 * re-reads and applies `change` to what won; a manifest stamped by a newer epoch is FENCED.
 */
export async function updateManifest(
  store: ObjectStore,
  epoch: number,
  change: (m: ReplicaManifest) => ReplicaManifest,
  known?: TaggedManifest,
): Promise<TaggedManifest> {
  let cur = known ?? (await readTagged(store));
  for (let attempt = 1; ; attempt++) {
    if (cur === undefined) {
      throw new HyperError(
        'conflict',
        'REPLICA_MISMATCH',
        `The replica manifest ${store.url}${REPLICA_KEY} was deleted while the replicator ran`,
        { key: REPLICA_KEY, suggestion: 'Format the primary again to start a new replica.' },
      );
    }
    const theirs = cur.manifest.writerEpoch ?? 0;
    if (theirs > epoch) {
      throw new HyperError(
        'conflict',
        'FENCED',
        `Another replicator (lease epoch ${theirs}, ours ${epoch}) took the replica ${store.url} over`,
        {
          key: REPLICA_KEY,
          suggestion:
            'Only one "hyper replica serve" may ship to a replica: stop the other one, or start this one again with --force to take it back.',
        },
      );
    }
    const next: ReplicaManifest = { ...change(cur.manifest), writerEpoch: epoch };
    try {
      const { etag } = await store.put(REPLICA_KEY, encode(next), { ifMatch: cur.etag });
      return { manifest: next, etag };
    } catch (e) {
      if (!isHyperError(e) || e.code !== 'PRECONDITION_FAILED' || attempt >= 8) throw e;
      cur = await readTagged(store);
    }
  }
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
