import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as hyper from '../../src/index.js';

describe('library entry point', () => {
  it('exports the engine, the stores and the NBD server, and they work together', async () => {
    const store = await hyper.openStore('mem://index-test/');
    await hyper.Volume.create(store, { size: 1 << 20 });
    const vol = await hyper.Volume.open(store, { holder: 'library-test', flushIntervalMs: 0 });
    await vol.write(4096, Buffer.alloc(4096, 7));
    const { checkpoint } = await vol.flush();
    const device = new hyper.VolumeDevice(vol);
    assert.equal(device.size, 1 << 20);
    assert.deepEqual(await device.read(4096, 4096), Buffer.alloc(4096, 7));
    await vol.close();
    const stat = await hyper.statVolume(store);
    assert.equal(stat.checkpoint, checkpoint);
    assert.equal(stat.mappedBlocks, 1);
    const server = new hyper.NbdServer({ exports: [] });
    assert.equal(typeof server.listen, 'function');
    await assert.rejects(
      hyper.Volume.open(await hyper.openStore('mem://index-test-missing/')),
      (e) => hyper.isHyperError(e, 'VOLUME_NOT_FOUND'),
    );
  });
});
