/**
 * What a device or file already holds in the bytes `replica format` would overwrite (the
 * primary's first MiB, its metadata): the on-disk signatures that `blkid` and `wipefs` look
 * for, at the offsets their formats define. Used to refuse formatting over a file system, a
 * partition table or a RAID/LVM member unless the operator says --force, as mkfs and DRBD's
 * create-md ask before they overwrite one.
 */

interface Signature {
  /** Byte offset of the magic. */
  at: number;
  magic: Buffer;
  what: string;
}

const sig = (at: number, magic: string | number[], what: string): Signature => ({
  at,
  magic: typeof magic === 'string' ? Buffer.from(magic, 'latin1') : Buffer.from(magic),
  what,
});

/** Most specific first: a FAT or NTFS boot sector also ends in the MBR's 0x55AA. */
const SIGNATURES: Signature[] = [
  sig(0, 'LUKS\xba\xbe', 'a LUKS encrypted volume'),
  sig(0, 'XFSB', 'an XFS file system'),
  sig(1080, [0x53, 0xef], 'an ext2/ext3/ext4 file system'),
  sig(65600, '_BHRfS_M', 'a btrfs file system'),
  sig(4086, 'SWAPSPACE2', 'a Linux swap area'),
  sig(4086, 'SWAP-SPACE', 'a Linux swap area'),
  sig(536, 'LVM2 001', 'an LVM2 physical volume'),
  sig(0, [0xfc, 0x4e, 0x2b, 0xa9], 'a Linux RAID (md) member'),
  sig(4096, [0xfc, 0x4e, 0x2b, 0xa9], 'a Linux RAID (md) member'),
  sig(512, 'EFI PART', 'a GPT partition table'),
  sig(3, 'NTFS    ', 'an NTFS file system'),
  sig(82, 'FAT32   ', 'a FAT file system'),
  sig(54, 'FAT16   ', 'a FAT file system'),
  sig(54, 'FAT12   ', 'a FAT file system'),
  sig(32769, 'CD001', 'an ISO 9660 image'),
  sig(510, [0x55, 0xaa], 'a DOS (MBR) partition table or boot sector'),
];

/**
 * The known signature `head` (the first bytes of a device or file) holds, as a description,
 * or undefined. Only signatures count, as for blkid and mkfs: other bytes there (what is left
 * after `wipefs -a`, or data of no known format) are overwritten without a question.
 */
export function describeSignature(head: Buffer): string | undefined {
  for (const s of SIGNATURES) {
    const end = s.at + s.magic.length;
    if (end <= head.length && head.subarray(s.at, end).equals(s.magic)) return s.what;
  }
  return undefined;
}
