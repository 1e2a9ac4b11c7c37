/**
 * What `replica format` finds in the first MiB it would overwrite (src/replica/signatures.ts):
 * each known signature at its offset; nothing in zeros or in data of no known format.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describeSignature } from '../../../src/replica/signatures.js';

const MiB = 1024 * 1024;

function withMagic(at: number, magic: string | number[]): Buffer {
  const b = Buffer.alloc(MiB);
  (typeof magic === 'string' ? Buffer.from(magic, 'latin1') : Buffer.from(magic)).copy(b, at);
  return b;
}

describe('replica format: what a device already holds', () => {
  it('names file systems, partition tables and RAID/LVM labels at their offsets', () => {
    const cases: [number, string | number[], RegExp][] = [
      [0, 'LUKS\xba\xbe', /LUKS/],
      [0, 'XFSB', /XFS/],
      [1080, [0x53, 0xef], /ext2\/ext3\/ext4/],
      [65600, '_BHRfS_M', /btrfs/],
      [4086, 'SWAPSPACE2', /swap/],
      [536, 'LVM2 001', /LVM2/],
      [4096, [0xfc, 0x4e, 0x2b, 0xa9], /RAID/],
      [512, 'EFI PART', /GPT/],
      [3, 'NTFS    ', /NTFS/],
      [82, 'FAT32   ', /FAT/],
      [32769, 'CD001', /ISO 9660/],
      [510, [0x55, 0xaa], /MBR/],
    ];
    for (const [at, magic, want] of cases)
      assert.match(describeSignature(withMagic(at, magic)) ?? '(nothing)', want, `magic at ${at}`);
    // A FAT boot sector also ends in 0x55AA: the file system is named, not the partition table.
    const fat = withMagic(82, 'FAT32   ');
    fat[510] = 0x55;
    fat[511] = 0xaa;
    assert.match(describeSignature(fat) ?? '', /FAT/);
  });

  it('finds nothing in zeros, in data of no known format, or in a short file', () => {
    assert.equal(describeSignature(Buffer.alloc(MiB)), undefined);
    assert.equal(describeSignature(Buffer.alloc(0)), undefined);
    const b = Buffer.alloc(MiB, 0x33);
    assert.equal(describeSignature(b), undefined);
    assert.equal(describeSignature(Buffer.from('EFI PAR')), undefined);
  });
});
