import { readFileSync, readdirSync } from 'node:fs';
const dir = process.argv[2]; const target = process.argv[3];
const f = readdirSync(dir).sort()[0];
const p = JSON.parse(readFileSync(`${dir}/${f}`, 'utf8'));
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const t = new Map(); p.samples.forEach((id, i) => t.set(id, (t.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
const stacks = new Map();
for (const [id, time] of t) {
  const n = byId.get(id); if (n.callFrame.functionName !== target) continue;
  let cur = parent.get(id); const chain = [];
  for (let d = 0; d < 6 && cur !== undefined; d++) { const c = byId.get(cur).callFrame; chain.push(`${c.functionName}@${c.url.split('/').pop()}:${c.lineNumber}`); cur = parent.get(cur); }
  const k = chain.join(' < '); stacks.set(k, (stacks.get(k) ?? 0) + time);
}
for (const [k, v] of [...stacks].sort((a, b) => b[1] - a[1]).slice(0, 8)) console.log((v / 1000).toFixed(0).padStart(6), k);
