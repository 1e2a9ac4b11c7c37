import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemStore } from '../../../../src/format/store/mem.js';
import { probeConditionalWrites } from '../../../../src/format/store/probe.js';
import type { PutBody, PutOptions } from '../../../../src/format/store/types.js';
import { collect, rejectsWith } from '../../../helpers/store-conformance.js';

/** A store like s3rver: conditions are ignored and every PUT overwrites. */
class IgnoresConditions extends MemStore {
  constructor(private readonly ignore: 'ifNoneMatch' | 'ifMatch') {
    super('mem://careless/', new Map());
  }
  override put(key: string, body: PutBody, options: PutOptions = {}): Promise<{ etag: string }> {
    const { [this.ignore]: _dropped, ...rest } = options;
    return super.put(key, body, rest);
  }
}

describe('probeConditionalWrites', () => {
  it('passes on a store that honours conditions, leaving nothing behind', async () => {
    const s = MemStore.isolated();
    await probeConditionalWrites(s);
    assert.deepEqual((await collect(s, '')).keys, []);
  });

  it('reports a store that ignores If-None-Match', async () => {
    const s = new IgnoresConditions('ifNoneMatch');
    await rejectsWith(probeConditionalWrites(s), 'CONDITIONAL_WRITES_UNSUPPORTED');
    assert.deepEqual((await collect(s, '')).keys, [], 'the probe key is deleted');
  });

  it('reports a store that ignores If-Match', async () => {
    const s = new IgnoresConditions('ifMatch');
    await rejectsWith(probeConditionalWrites(s), 'CONDITIONAL_WRITES_UNSUPPORTED');
  });
});
