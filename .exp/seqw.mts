import { openStore } from '../src/format/store/index.js';
import { Volume } from '../src/format/volume/volume.js';
const MiB = 1 << 20;
const [pipeline, dirtySegs, segMiB, chunkKiB] = process.argv.slice(2).map(Number);
const url = `s3://${process.env.HYPER_TEST_S3_BUCKET}/exp-${Date.now()}-${Math.random().toString(36).slice(2)}/`;
const store = await openStore(url, { endpoint: process.env.HYPER_TEST_S3_ENDPOINT });
const size = 256 * MiB;
await Volume.create(store, { size, segmentSize: segMiB * MiB });
const v = await Volume.open(store, { flushIntervalMs: 0, flushPipeline: pipeline, maxDirtyBytes: dirtySegs * segMiB * MiB });
const chunk = Buffer.alloc(chunkKiB * 1024);
for (let i = 0; i < chunk.length; i += 8) chunk.writeDoubleLE(Math.random(), i);
const cpu0 = process.cpuUsage();
const t0 = performance.now();
const inflight: Promise<void>[] = [];
for (let o = 0; o < size; o += chunk.length) {
  inflight.push(v.write(o, chunk));
  if (inflight.length >= 16) await inflight.shift();
}
await Promise.all(inflight);
await v.flush();
const s = (performance.now() - t0) / 1000;
const c = process.cpuUsage(cpu0);
console.log(`pipeline ${pipeline} dirty ${dirtySegs}seg seg ${segMiB}MiB chunk ${chunkKiB}K: ${(256 / s).toFixed(1)} MiB/s, cpu ${((c.user + c.system) / 1e6).toFixed(2)} s`);
await v.close();
await store.close();
