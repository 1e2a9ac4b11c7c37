"""A libnbd writer for crash trials.

Writes 4 KiB blocks at random offsets, each filled with a unique pattern (write number and
block number), and flushes every few writes. With --run-max K, each write covers 1 to K
blocks in a row (one request; each block still gets its own pattern). It prints one line per
event, flushed at once:
  I <n> <block>   write n to block is about to be sent (it may land even if never acknowledged)
  W <n> <block>   write n to block was acknowledged
  F <n>           a flush acknowledged after write n: writes 1..n must survive any crash
It runs until the server goes away (killed) or it has done --max writes.
Usage: crash-writer.py URI BLOCKS SEED [--start N] [--fua-every K] [--flush-every K] [--max N]
                       [--run-max K]
Write numbers start after --start, so that numbers stay unique across runs.
"""
import random
import struct
import sys

import nbd


def main():
    uri, blocks, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    opts = dict(zip(sys.argv[4::2], sys.argv[5::2]))
    flush_every = int(opts.get("--flush-every", "8"))
    fua_every = int(opts.get("--fua-every", "0"))
    limit = int(opts.get("--max", "1000000"))
    start = int(opts.get("--start", "0"))
    run_max = int(opts.get("--run-max", "1"))
    rng = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    out = sys.stdout
    n = start
    try:
        while n < start + limit:
            n += 1
            k = rng.randrange(1, run_max + 1) if run_max > 1 else 1
            b = rng.randrange(blocks - k + 1)
            data = b"".join(struct.pack("<QQ", n, b + i) * 256 for i in range(k))
            fua = fua_every > 0 and (n - start) % fua_every == 0
            for i in range(k):
                out.write(f"I {n} {b + i}\n")
            out.flush()
            h.pwrite(data, b * 4096, nbd.CMD_FLAG_FUA if fua else 0)
            for i in range(k):
                out.write(f"W {n} {b + i}\n")
            if fua:
                out.write(f"U {n}\n")
            if (n - start) % flush_every == 0:
                h.flush()
                out.write(f"F {n}\n")
            out.flush()
    except nbd.Error as e:
        out.write(f"E {e}\n")
        out.flush()


main()
