/**
 * The replication primary's header: a round trip keeps every field, and a header written
 * before the replica epoch field existed still reads (as epoch 0).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeEnvelope } from '../../../../src/format/codec/envelope.js';
import {
  PRIMARY_MAGIC,
  PRIMARY_SLOT_BYTES,
  PRIMARY_VERSION,
  decodePrimaryHeader,
  encodePrimaryHeader,
  newPrimaryHeader,
} from '../../../../src/format/codec/primary.js';

const header = () => ({
  ...newPrimaryHeader({
    deviceSize: 64 * 1024 * 1024,
    regionSize: 1024 * 1024,
    dataBlockSize: 4096,
    replicaUrl: 'mem://primary-codec/r/',
  }),
  seq: 7,
  replicaCheckpoint: 41,
  lastConsistent: 40,
  owner: 'hyper-replica@host:1',
  replicaEpoch: 12,
});

describe('primary header codec', () => {
  it('round-trips every field, the replica epoch included', () => {
    const h = header();
    assert.deepEqual(decodePrimaryHeader(encodePrimaryHeader(h)), h);
  });

  it('reads a header written before the replica epoch field as epoch 0', () => {
    const h = header();
    const slot = encodePrimaryHeader(h);
    const length = slot.readUInt32LE(8);
    // The body without its last 8 bytes (the epoch), in a fresh envelope.
    const old = encodeEnvelope(PRIMARY_MAGIC, PRIMARY_VERSION, slot.subarray(12, length - 4 - 8));
    const padded = Buffer.alloc(PRIMARY_SLOT_BYTES);
    old.copy(padded);
    assert.deepEqual(decodePrimaryHeader(padded), { ...h, replicaEpoch: 0 });
  });
});
