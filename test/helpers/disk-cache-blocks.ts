import { createHash } from 'node:crypto';

/** Deterministic bytes for a cache key: tests check what a cache returns against these. */
export function blockFor(seg: number, off: number, len: number): Buffer {
  const out = Buffer.alloc(len);
  let at = 0;
  for (let i = 0; at < len; i++) {
    const h = createHash('sha256').update(`${seg}:${off}:${i}`).digest();
    at += h.copy(out, at);
  }
  return out;
}
