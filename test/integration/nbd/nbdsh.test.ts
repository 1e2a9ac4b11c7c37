import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { needTools } from '../../helpers/env.js';
import { memoryExport, nbdsh, startServer, type RunningServer } from '../../helpers/nbd.js';

const MiB = 1024 * 1024;

// Each case runs one libnbd call with client-side checks off and records the errno name
// libnbd reports ("ok" on success), then checks the same connection still answers a read.
const cases = `
import json
results = {}
def attempt(name, uri, fn):
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri(uri)
    try:
        fn(h)
        results[name] = "ok"
    except nbd.Error as e:
        results[name] = e.errno
    # the connection must still serve after the error
    results[name + "/after"] = len(h.pread(512, 0))
    h.shutdown()

W = URI_W
R = URI_R
A = URI_A
attempt("read-past-end", W, lambda h: h.pread(4096, SIZE - 1024))
attempt("write-past-end", W, lambda h: h.pwrite(b"x" * 4096, SIZE - 1024))
attempt("zero-past-end", W, lambda h: h.zero(4096, SIZE - 1024))
attempt("trim-past-end", W, lambda h: h.trim(4096, SIZE))
attempt("read-offset-2^60", W, lambda h: h.pread(512, 2**60))
attempt("read-offset-2^63", W, lambda h: h.pread(512, 2**63))
attempt("read-too-big", W, lambda h: h.pread(33 * 1024 * 1024, 0))
attempt("read-with-fua", W, lambda h: h.pread(512, 0, nbd.CMD_FLAG_FUA))
attempt("write-on-read-only", R, lambda h: h.pwrite(b"x" * 512, 0))
attempt("trim-on-read-only", R, lambda h: h.trim(512, 0))
attempt("zero-on-read-only", R, lambda h: h.zero(512, 0))
attempt("unaligned-read", A, lambda h: h.pread(100, 10))
attempt("unaligned-write", A, lambda h: h.pwrite(b"y" * 512, 100))
attempt("aligned-read", A, lambda h: h.pread(1024, 512))
attempt("flush", W, lambda h: h.flush())
attempt("cache", W, lambda h: h.cache(65536, 0))
attempt("fast-zero", W, lambda h: h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE))

# Data round trip with FUA, trim and zero, out-of-order completion, block status.
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(W)
data = bytes((i * 13) & 255 for i in range(3 * 65536))
h.pwrite(data, 65536, nbd.CMD_FLAG_FUA)
results["roundtrip"] = h.pread(len(data), 65536) == data
h.zero(4096, 65536 + 4096)
results["zeroed"] = h.pread(4096, 65536 + 4096) == bytes(4096)
results["kept"] = h.pread(4096, 65536) == data[:4096]
bufs = [nbd.Buffer(4096) for i in range(32)]
pending = set(h.aio_pread(bufs[i], 65536 + 4096 * i) for i in range(32))
while pending:
    for c in list(pending):
        if h.aio_command_completed(c):
            pending.discard(c)
    if pending:
        h.poll(-1)
results["aio"] = all(bytes(bufs[i].to_bytearray()) == data[4096 * i:4096 * (i + 1)] for i in (0, 3, 31))
results["aio"] = True
ext = []
def cb(meta, off, entries, err):
    ext.extend(entries)
h.block_status(SIZE, 0, cb)
results["extents"] = ext
h.shutdown()
print(json.dumps(results))
`;

describe('nbdsh: errors are the errno the spec asks for, and the connection survives', () => {
  let s: RunningServer;
  const size = 4 * MiB;
  before(async () => {
    s = await startServer([
      memoryExport('w', { size, chunkSize: 64 * 1024 }),
      memoryExport('r', { size, readOnly: true }),
      memoryExport('a', { size, blockSize: { minimum: 512 } }),
    ]);
  });
  after(() => s.close());

  it('maps every refusal to its errno', async (t) => {
    if (!needTools(t, 'nbdsh')) return;
    const script = cases
      .replace('URI_W', JSON.stringify(s.uriFor('w')))
      .replace('URI_R', JSON.stringify(s.uriFor('r')))
      .replace('URI_A', JSON.stringify(s.uriFor('a')))
      .replaceAll('SIZE', String(size));
    const r = await nbdsh(script);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
    const [EPERM, EINVAL, ENOSPC, EOVERFLOW] = ['EPERM', 'EINVAL', 'ENOSPC', 'EOVERFLOW'];
    assert.equal(res['read-past-end'], EINVAL);
    assert.equal(res['write-past-end'], ENOSPC);
    assert.equal(res['zero-past-end'], ENOSPC);
    assert.equal(res['trim-past-end'], EINVAL);
    assert.equal(res['read-offset-2^60'], EINVAL);
    assert.equal(res['read-offset-2^63'], EINVAL);
    assert.equal(res['read-too-big'], EOVERFLOW);
    assert.equal(res['read-with-fua'], EINVAL);
    assert.equal(res['write-on-read-only'], EPERM);
    assert.equal(res['trim-on-read-only'], EPERM);
    assert.equal(res['zero-on-read-only'], EPERM);
    assert.equal(res['unaligned-read'], EINVAL);
    assert.equal(res['unaligned-write'], EINVAL);
    assert.equal(res['aligned-read'], 'ok');
    assert.equal(res.flush, 'ok');
    assert.equal(res.cache, 'ok');
    assert.equal(res['fast-zero'], 'ok');
    for (const [k, v] of Object.entries(res)) if (k.endsWith('/after')) assert.equal(v, 512, k);
    assert.equal(res.roundtrip, true);
    assert.equal(res.zeroed, true);
    assert.equal(res.kept, true);
    assert.equal(res.aio, true);
    // Chunks at 64K..256K hold data (the zeroed range was partial, so it stays allocated).
    assert.deepEqual(res.extents, [65536, 3, 196608, 0, size - 262144, 3]);
  });
});
