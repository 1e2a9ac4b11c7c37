// Child process for test/unit/format/cache/disk-cache.test.ts: fills a disk cache without end
// (killed with SIGKILL by the test). Entry bytes are a function of the key (blockFor).
import { DiskCache } from '../../src/format/cache/disk-cache.js';
import { blockFor } from './disk-cache-blocks.js';

const [dir, size, slotSize] = process.argv.slice(2) as [string, string, string];
const cache = await DiskCache.open({
  dir,
  sizeBytes: Number(size),
  slotSize: Number(slotSize),
  identity: 'vol-a',
});
const store = await cache.storeId('mem://a/');
let announced = false;
for (let seg = 1; ; seg++) {
  for (let k = 0; k < 64; k++) cache.put(store, seg, k * 4096, blockFor(seg, k * 4096, 4096));
  await cache.settle();
  if (!announced && seg >= 4) {
    process.stdout.write(`ready\n`);
    announced = true;
  }
}
