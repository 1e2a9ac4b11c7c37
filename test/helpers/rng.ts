/** A small seeded PRNG (mulberry32) so that randomized tests replay exactly from their seed. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A chooser of one of `weights`' names, each as likely as its weight (draws from `r`). */
export function weighted<T extends string>(
  r: () => number,
  weights: readonly (readonly [T, number])[],
): () => T {
  const total = weights.reduce((a, [, w]) => a + w, 0);
  return () => {
    let x = r() * total;
    for (const [name, w] of weights) if ((x -= w) < 0) return name;
    return (weights[weights.length - 1] as readonly [T, number])[0];
  };
}
