// Child process for test/unit/format/store/file-race.test.ts: races create-only or CAS increments on one key.
import { isHyperError } from '../../src/errors.js';
import { FileStore } from '../../src/format/store/file.js';

const [dir, mode, id, iterations] = process.argv.slice(2) as [string, string, string, string];
const store = new FileStore(dir);

if (mode === 'create') {
  // Say we are loaded, then wait for the start file so that every child writes at once.
  const { existsSync } = await import('node:fs');
  process.stdout.write('ready\n');
  while (!existsSync(iterations)) await new Promise((r) => setTimeout(r, 1));
  try {
    await store.put('race', Buffer.from(`child ${id}`), { ifNoneMatch: true });
    process.stdout.write('won\n');
  } catch (e) {
    process.stdout.write(isHyperError(e, 'OBJECT_EXISTS') ? 'lost\n' : `error ${String(e)}\n`);
  }
} else {
  let conflicts = 0;
  for (let i = 0; i < Number(iterations); i++) {
    for (;;) {
      const cur = await store.get('counter');
      const next = Number(cur.body.toString()) + 1;
      try {
        await store.put('counter', Buffer.from(String(next)), { ifMatch: cur.etag });
        break;
      } catch (e) {
        if (!isHyperError(e, 'PRECONDITION_FAILED')) throw e;
        conflicts++;
      }
    }
  }
  process.stdout.write(`done ${conflicts}\n`);
}
