/*
 * CRC-32C (Castagnoli) for hyper's checksums, on the processor's CRC32 instruction (SSE 4.2)
 * in three independent streams at once.
 *
 * The instruction takes 3 cycles and can start one per cycle, so a single chain of it runs at a
 * third of what the unit can do. Here a buffer is cut into three equal parts whose CRCs run
 * side by side, then joined: the CRC register is linear over GF(2), so the register after part
 * A then part B equals shift(register after A, |B|) XOR (register after B started from 0),
 * where shift appends |B| zero bytes. shift for a fixed length is a linear map of 32 bits,
 * applied as four lookups in tables built at load time from the instruction itself.
 *
 * Exposed to JavaScript (N-API, no other dependency):
 *   crc32c(data: Uint8Array, initial?: number): number   the CRC-32C of data, continuing
 *       from `initial` (a CRC returned before: crc32c(b, crc32c(a)) is the CRC of a then b)
 *   hardware: boolean                                    whether the processor has SSE 4.2
 * Without the instruction (another architecture, an old processor) the module loads with
 * hardware = false and crc32c throws: the caller uses another implementation.
 */
#include <node_api.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86 1
#include <nmmintrin.h>
#else
#define HAVE_X86 0
#endif

#if HAVE_X86

/* Part lengths of the three-stream rounds, longest first; multiples of 8. */
#define LONG_PART 8192
#define MID_PART 1360
#define SHORT_PART 256

/* shift tables: table[k][v] is the register after appending the part's zeros to v << 8k. */
static uint32_t long_shift[4][256];
static uint32_t mid_shift[4][256];
static uint32_t short_shift[4][256];
static int hardware = 0;

static inline uint32_t shift(const uint32_t t[4][256], uint32_t c) {
  return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
}

__attribute__((target("sse4.2"))) static void build_shift(uint32_t t[4][256], size_t zeros) {
  uint32_t basis[32];
  for (int b = 0; b < 32; b++) {
    uint64_t c = (uint64_t)1 << b;
    for (size_t i = 0; i < zeros; i += 8) c = _mm_crc32_u64(c, 0);
    basis[b] = (uint32_t)c;
  }
  for (int k = 0; k < 4; k++) {
    for (int v = 0; v < 256; v++) {
      uint32_t x = 0;
      for (int j = 0; j < 8; j++)
        if ((v >> j) & 1) x ^= basis[8 * k + j];
      t[k][v] = x;
    }
  }
}

static inline uint64_t load64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* Rounds of three parts of `part` bytes while they fit; returns the register. */
__attribute__((target("sse4.2"))) static inline uint32_t rounds(uint32_t crc, const uint8_t **pp,
                                                                  size_t *lenp, size_t part,
                                                                  const uint32_t t[4][256]) {
  const uint8_t *p = *pp;
  size_t len = *lenp;
  while (len >= 3 * part) {
    uint64_t c0 = crc, c1 = 0, c2 = 0;
    const uint8_t *a = p, *b = p + part, *c = p + 2 * part;
    for (size_t i = 0; i < part; i += 8) {
      c0 = _mm_crc32_u64(c0, load64(a + i));
      c1 = _mm_crc32_u64(c1, load64(b + i));
      c2 = _mm_crc32_u64(c2, load64(c + i));
    }
    crc = shift(t, (uint32_t)c0) ^ (uint32_t)c1;
    crc = shift(t, crc) ^ (uint32_t)c2;
    p += 3 * part;
    len -= 3 * part;
  }
  *pp = p;
  *lenp = len;
  return crc;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t initial, const uint8_t *p,
                                                              size_t len) {
  uint32_t crc = ~initial;
  /* Byte steps up to an 8-byte boundary (loads below are unaligned-safe anyway). */
  while (len > 0 && ((uintptr_t)p & 7) != 0) {
    crc = _mm_crc32_u8(crc, *p++);
    len--;
  }
  crc = rounds(crc, &p, &len, LONG_PART, long_shift);
  crc = rounds(crc, &p, &len, MID_PART, mid_shift);
  crc = rounds(crc, &p, &len, SHORT_PART, short_shift);
  uint64_t c = crc;
  for (; len >= 8; len -= 8, p += 8) c = _mm_crc32_u64(c, load64(p));
  crc = (uint32_t)c;
  while (len > 0) {
    crc = _mm_crc32_u8(crc, *p++);
    len--;
  }
  return ~crc;
}

static void build_all(void) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("sse4.2")) return;
  build_shift(long_shift, LONG_PART);
  build_shift(mid_shift, MID_PART);
  build_shift(short_shift, SHORT_PART);
  hardware = 1;
}

/* Once per process: worker threads load the module again, and must not rebuild the tables
   another thread is reading. */
static pthread_once_t built = PTHREAD_ONCE_INIT;
static void init_hw(void) { pthread_once(&built, build_all); }

#else
static int hardware = 0;
static void init_hw(void) {}
static uint32_t crc32c_hw(uint32_t initial, const uint8_t *p, size_t len) {
  (void)p;
  (void)len;
  return initial;
}
#endif

static napi_value js_crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (!hardware) {
    napi_throw_error(env, NULL, "crc32c: the processor has no SSE 4.2 CRC32 instruction");
    return NULL;
  }
  if (argc < 1) {
    napi_throw_type_error(env, NULL, "crc32c: data must be a Uint8Array");
    return NULL;
  }
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value arraybuffer;
  size_t offset;
  if (napi_get_typedarray_info(env, argv[0], &type, &length, &data, &arraybuffer, &offset) !=
          napi_ok ||
      type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "crc32c: data must be a Uint8Array");
    return NULL;
  }
  uint32_t initial = 0;
  if (argc > 1) {
    napi_valuetype vt;
    napi_typeof(env, argv[1], &vt);
    if (vt != napi_undefined) {
      if (vt != napi_number || napi_get_value_uint32(env, argv[1], &initial) != napi_ok) {
        napi_throw_type_error(env, NULL, "crc32c: initial must be a number");
        return NULL;
      }
    }
  }
  uint32_t crc = crc32c_hw(initial, (const uint8_t *)data, length);
  napi_value out;
  napi_create_uint32(env, crc, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  init_hw();
  napi_value fn, hw;
  napi_create_function(env, "crc32c", NAPI_AUTO_LENGTH, js_crc32c, NULL, &fn);
  napi_set_named_property(env, exports, "crc32c", fn);
  napi_get_boolean(env, hardware != 0, &hw);
  napi_set_named_property(env, exports, "hardware", hw);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
