/* wiretun.datapath._native: the per-segment work of the WireGuard data path, in C.
 *
 * Outbound: TUN frames (vnet header + TSO/USO super-packet, or plain packets) to one buffer
 * of sealed, padded transport messages plus the UDP_SEGMENT groups that send it.
 * Inbound: a run of transport messages of one keypair from a UDP GRO buffer to decrypted,
 * replay-checked, source-checked packets, coalesced into TUN write frames (as GRO would).
 *
 * No I/O and no clock: buffers, keys and counters in, buffers out. The GIL is released for
 * the work on a batch. Every length that comes from the network or the TUN is checked before
 * use. wiretun/datapath/pure.py is the executable specification; tests hold the two equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#define VNET_HDR_LEN 10
#define F_NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define GSO_ECN 0x80
/* gso.MAX_SEGMENTS (64 KB at the 48-byte minimum MSS), MAX_SPLIT_BYTES, MAX_IPV6_EXT. */
#define MIN_MSS 48
#define MAX_SEGMENTS ((0xFFFF + MIN_MSS - 1) / MIN_MSS)
#define MAX_SPLIT_BYTES ((size_t)1 << 18)
#define MAX_IPV6_EXT 4
#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define MSG_TRANSPORT 4
#define HEADER_LEN 16
#define TAG_LEN 16
#define OVERHEAD (HEADER_LEN + TAG_LEN)
#define UDP_GSO_MAX_SEGMENTS 64
#define RING_SIZE 8192
#define RING_MASK (RING_SIZE - 1)
#define WINDOW_SIZE 8128
#define REJECT_AFTER_MESSAGES (UINT64_MAX - 8192ULL) /* 2**64 - 2**13 - 1 */
#define MAX_COALESCED_LEN 0xFFFF
#define UDP_MAX_COALESCE 64

/* ---------------------------------------------------------------- the AEAD

ChaCha20-Poly1305 through the functions of the provider that implements it (OpenSSL 3's
public dispatch tables), not through EVP_EncryptInit_ex / EVP_CIPHER_CTX_ctrl: per message
those add a parameter lookup for the IV length and one for the tag on top of the provider's
own work, about a tenth of the whole cost of sealing a 1420-byte packet. The calls below
are the ones EVP makes in the end, with the same arguments. */
static EVP_CIPHER *chacha; /* fetched once at import; its reference keeps the provider loaded */
static struct {
    void *provctx;
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_decrypt_init_fn *dinit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_params;
} aead;

/* Is `name` one of the colon-separated `names`? */
static int has_name(const char *names, const char *name) {
    size_t n = strlen(name);
    for (const char *p = names; *p;) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncasecmp(p, name, n) == 0) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

/* Fill `aead` from the dispatch table of the provider behind `chacha`. 0, or -1. */
static int aead_load(void) {
    const OSSL_PROVIDER *prov = EVP_CIPHER_get0_provider(chacha);
    const char *name = EVP_CIPHER_get0_name(chacha);
    int no_cache = 0;
    const OSSL_ALGORITHM *alg = prov ? OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_cache) : NULL;
    for (; alg != NULL && alg->algorithm_names != NULL; alg++) {
        if (!has_name(alg->algorithm_names, name)) continue;
        for (const OSSL_DISPATCH *d = alg->implementation; d->function_id != 0; d++) {
            switch (d->function_id) {
            case OSSL_FUNC_CIPHER_NEWCTX: aead.newctx = OSSL_FUNC_cipher_newctx(d); break;
            case OSSL_FUNC_CIPHER_FREECTX: aead.freectx = OSSL_FUNC_cipher_freectx(d); break;
            case OSSL_FUNC_CIPHER_ENCRYPT_INIT: aead.einit = OSSL_FUNC_cipher_encrypt_init(d); break;
            case OSSL_FUNC_CIPHER_DECRYPT_INIT: aead.dinit = OSSL_FUNC_cipher_decrypt_init(d); break;
            case OSSL_FUNC_CIPHER_UPDATE: aead.update = OSSL_FUNC_cipher_update(d); break;
            case OSSL_FUNC_CIPHER_FINAL: aead.final = OSSL_FUNC_cipher_final(d); break;
            case OSSL_FUNC_CIPHER_GET_CTX_PARAMS: aead.get_params = OSSL_FUNC_cipher_get_ctx_params(d); break;
            default: break;
            }
        }
        aead.provctx = OSSL_PROVIDER_get0_provider_ctx(prov);
        break;
    }
    if (prov && alg) OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, alg);
    return aead.newctx && aead.freectx && aead.einit && aead.dinit && aead.update && aead.final
           && aead.get_params ? 0 : -1;
}

/* A cipher context keyed with the 32-byte `key` for sealing (`enc`) or opening; NULL on failure. */
static void *aead_new(const uint8_t *key, int enc) {
    void *c = aead.newctx(aead.provctx);
    if (c == NULL) return NULL;
    if ((enc ? aead.einit : aead.dinit)(c, key, 32, NULL, 0, NULL) != 1) {
        aead.freectx(c);
        return NULL;
    }
    return c;
}

static void nonce_of(uint8_t nonce[12], uint64_t counter);

/* libcrypto's AVX-512 ChaCha20-Poly1305 can return with the upper halves of the vector
 * registers dirty; every legacy-SSE instruction after it (ours, libc's, the interpreter's)
 * then pays a transition penalty until something clears them: measured here, about a tenth
 * of the cost of sealing a 1420-byte packet. VZEROUPPER after each message clears them. */
#if defined(__x86_64__) || defined(__i386__)
static int have_avx; /* set at import */
static inline void clean_upper(void) {
    if (have_avx) __asm__ volatile("vzeroupper");
}
#else
static inline void clean_upper(void) {}
#endif

/* Seal the `n` bytes at `io` in place with the nonce of `counter`; the tag goes after them. */
static int aead_seal(void *c, uint8_t *io, size_t n, uint64_t counter) {
    uint8_t nonce[12];
    size_t outl = 0, fin = 0;
    nonce_of(nonce, counter);
    OSSL_PARAM tag[2] = {OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, io + n, TAG_LEN), OSSL_PARAM_END};
    int ok = aead.einit(c, NULL, 0, nonce, sizeof nonce, NULL) == 1
             && (n == 0 || aead.update(c, io, &outl, n, io, n) == 1)
             && aead.final(c, io + outl, &fin, 0) == 1
             && aead.get_params(c, tag) == 1;
    clean_upper();
    return ok ? 0 : -1;
}

/* Open the `n` bytes at `in` with `tag` into `out`: 0, or -1 when they are not authentic. */
static int aead_open(void *c, uint8_t *out, const uint8_t *in, size_t n, const uint8_t *tag, uint64_t counter) {
    uint8_t nonce[12];
    size_t outl = 0, fin = 0;
    nonce_of(nonce, counter);
    OSSL_PARAM want[2] = {OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)tag, TAG_LEN), OSSL_PARAM_END};
    int ok = aead.dinit(c, NULL, 0, nonce, sizeof nonce, want) == 1
             && (n == 0 || aead.update(c, out, &outl, n, in, n) == 1)
             && aead.final(c, out + outl, &fin, 0) == 1;
    clean_upper();
    return ok ? 0 : -1;
}

/* ---------------------------------------------------------------- small helpers */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline void wr16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint32_t rdle32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rdle64(const uint8_t *p) {
    return (uint64_t)rdle32(p) | ((uint64_t)rdle32(p + 4) << 32);
}
static inline void wrle32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void wrle64(uint8_t *p, uint64_t v) { wrle32(p, (uint32_t)v); wrle32(p + 4, (uint32_t)(v >> 32)); }
/* WireGuard's nonce: 32 zero bits, then the counter little-endian. */
static void nonce_of(uint8_t nonce[12], uint64_t counter) {
    memset(nonce, 0, 4);
    wrle64(nonce + 4, counter);
}
static inline uint16_t rdne16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void wrne16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* The sum of `p` as big-endian 16-bit words (odd tail zero-padded), folded to 16 bits: a
 * value congruent to the plain word sum modulo 0xffff and zero exactly when every byte is.
 * Summed as native 32-bit words (RFC 1071: the one's-complement sum does not depend on byte
 * order up to a final swap, and 2**32 = 1 modulo 0xffff) into 64-bit vector lanes, 32 bytes
 * a step: no carries to track, and SSE2/NEON add two lanes at once. */
typedef uint64_t u64x2 __attribute__((vector_size(16)));

static uint64_t sum16(const uint8_t *p, size_t n) {
    const u64x2 low = {0xFFFFFFFFu, 0xFFFFFFFFu};
    u64x2 a = {0, 0}, b = {0, 0}, c = {0, 0}, d = {0, 0};
    size_t i = 0;
    for (; i + 32 <= n; i += 32) { /* < 2**32 words: the lanes cannot overflow */
        u64x2 x, y;
        memcpy(&x, p + i, 16);
        memcpy(&y, p + i + 16, 16);
        a += x & low;
        b += x >> 32;
        c += y & low;
        d += y >> 32;
    }
    u64x2 t = a + b + c + d;
    uint64_t s = t[0] + t[1];
    for (; i + 4 <= n; i += 4) {
        uint32_t w;
        memcpy(&w, p + i, 4);
        s += w;
    }
    for (; i + 2 <= n; i += 2) {
        uint16_t w;
        memcpy(&w, p + i, 2);
        s += w;
    }
    if (i < n) {
        uint8_t tail[2] = {p[i], 0};
        uint16_t w;
        memcpy(&w, tail, 2);
        s += w;
    }
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    s = ((s & 0xFF) << 8) | (s >> 8);
#endif
    return s;
}

/* wiretun.packet.ones_complement_sum(data, initial) given sum16(data) and whether data had a
 * nonzero byte. */
static uint32_t ocsum(uint64_t raw, int nonzero, uint32_t initial) {
    uint64_t t = raw % 0xFFFF + initial;
    t = (t & 0xFFFF) + (t >> 16);
    t = (t & 0xFFFF) + (t >> 16);
    if (t == 0 && (initial || nonzero)) return 0xFFFF;
    return (uint32_t)t;
}

static uint32_t ocsum_bytes(const uint8_t *p, size_t n, uint32_t initial) {
    uint64_t raw = sum16(p, n);
    return ocsum(raw, raw != 0, initial); /* the word sum is 0 exactly when every byte is */
}

static uint32_t fold32(uint64_t t) {
    while (t >> 16) t = (t & 0xFFFF) + (t >> 16);
    return (uint32_t)t;
}

/* session.padding_size: wireguard-go's calculatePaddingSize. */
static size_t padding_size(size_t length, size_t mtu) {
    size_t last = length, padded;
    if (mtu == 0) return ((last + 15) & ~(size_t)15) - last;
    if (last > mtu) last %= mtu;
    padded = (last + 15) & ~(size_t)15;
    if (padded > mtu) padded = mtu;
    return padded - last;
}

/* A growable byte buffer (malloc'd; usable without the GIL). */
typedef struct { uint8_t *p; size_t len, cap; } buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->p != NULL && b->len + extra <= b->cap) return 0; /* never memcpy to NULL */
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* ---------------------------------------------------------------- outbound: frame parsing */

/* Drop reasons of the frame decoder, in the order of wiretun.datapath.pure.FRAME_DROPS. */
enum {
    FD_SHORT_FRAME, FD_BAD_CSUM_OFFSET, FD_BAD_GSO_TYPE, FD_BAD_GSO, FD_BAD_GSO_HEADER,
    FD_BAD_GSO_FRAGMENT, FD_BAD_GSO_VERSION, FD_TOO_MANY_SEGMENTS, FD_SPLIT_TOO_LARGE, FD_COUNT
};
static const char *const frame_drop_names[FD_COUNT] = {
    "short_frame", "bad_csum_offset", "bad_gso_type", "bad_gso", "bad_gso_header",
    "bad_gso_fragment", "bad_gso_version", "too_many_segments", "split_too_large",
};

/* One frame, parsed: how it becomes segments. */
typedef struct {
    const uint8_t *pkt;
    size_t n;          /* packet length (without the vnet header) */
    int kind;          /* 0 plain, 1 complete checksum, 2 GSO split, -1 dropped */
    int tcp, v4;
    size_t iph, hl, gso, last, nseg, csum_at, csum_start;
} frame_t;

/* gso.ipv6_l4_offset: where an IPv6 packet's extension header chain (hop-by-hop, routing,
 * destination options) ends and the protocol after it; 0 if the chain runs past the packet
 * or is longer than MAX_IPV6_EXT headers. The caller guarantees n >= 28. */
static size_t ipv6_l4_offset(const uint8_t *pkt, size_t n, int *proto) {
    int nh = pkt[6];
    size_t off = 40;
    for (int i = 0; i <= MAX_IPV6_EXT; i++) {
        if (nh != 0 && nh != 43 && nh != 60) { *proto = nh; return off; }
        if (off + 2 > n) return 0;
        size_t len = ((size_t)pkt[off + 1] + 1) * 8;
        nh = pkt[off];
        off += len;
    }
    return 0;
}

/* gso.decode_frame's checks; fills f and returns -1 (ok) or a drop reason. */
static int parse_frame(const uint8_t *frame, size_t len, int vnet, frame_t *f) {
    memset(f, 0, sizeof *f);
    if (!vnet) {
        f->pkt = frame; f->n = len; f->kind = 0; f->nseg = 1;
        return -1;
    }
    if (len <= VNET_HDR_LEN) return FD_SHORT_FRAME;
    uint8_t flags = frame[0], gso_type = frame[1];
    size_t gso_size = rdne16(frame + 4), csum_start = rdne16(frame + 6);
    size_t csum_offset = rdne16(frame + 8);
    const uint8_t *pkt = frame + VNET_HDR_LEN;
    size_t n = len - VNET_HDR_LEN;
    f->pkt = pkt; f->n = n; f->nseg = 1;
    if (gso_type == GSO_NONE) {
        if (flags & F_NEEDS_CSUM) {
            if (csum_start + csum_offset + 2 > n || csum_start < 20) return FD_BAD_CSUM_OFFSET;
            f->kind = 1;
            f->csum_start = csum_start;
            f->csum_at = csum_start + csum_offset;
        }
        return -1;
    }
    if ((gso_type & GSO_ECN) || (gso_type != GSO_TCPV4 && gso_type != GSO_TCPV6 && gso_type != GSO_UDP_L4))
        return FD_BAD_GSO_TYPE;
    if (n < 28 || gso_size == 0) return FD_BAD_GSO;
    int version = pkt[0] >> 4;
    size_t iph = csum_start;
    int tcp = gso_type != GSO_UDP_L4;
    int proto = tcp ? PROTO_TCP : PROTO_UDP;
    if (version == 4 && gso_type != GSO_TCPV6) {
        if (iph != (size_t)(pkt[0] & 0x0F) * 4 || iph < 20 || pkt[9] != proto) return FD_BAD_GSO_HEADER;
        if ((pkt[6] & 0x3F) || pkt[7]) return FD_BAD_GSO_FRAGMENT;
    } else if (version == 6 && gso_type != GSO_TCPV4) {
        int l4 = -1; /* csum_start must be where the chain ends, not taken on trust */
        if (ipv6_l4_offset(pkt, n, &l4) != iph || l4 != proto) return FD_BAD_GSO_HEADER;
    } else {
        return FD_BAD_GSO_VERSION;
    }
    if (csum_offset != (size_t)(tcp ? 16 : 6) || iph + (tcp ? 20 : 8) > n) return FD_BAD_GSO_HEADER;
    size_t thl = 8;
    if (tcp) {
        thl = (size_t)(pkt[iph + 12] >> 4) * 4;
        if (thl < 20) return FD_BAD_GSO_HEADER;
    }
    size_t hl = iph + thl;
    if (hl >= n) return FD_BAD_GSO_HEADER;
    size_t plen = n - hl;
    size_t nseg = (plen + gso_size - 1) / gso_size;
    if (nseg > MAX_SEGMENTS) return FD_TOO_MANY_SEGMENTS;
    if (nseg * hl + plen > MAX_SPLIT_BYTES) return FD_SPLIT_TOO_LARGE;
    size_t last = plen - (nseg - 1) * gso_size;
    size_t seg_len = hl + (nseg > 1 ? gso_size : last);
    if (seg_len > 0xFFFF) return FD_BAD_GSO;
    f->kind = 2; f->tcp = tcp; f->v4 = version == 4;
    f->iph = iph; f->hl = hl; f->gso = gso_size; f->last = last; f->nseg = nseg;
    f->csum_at = iph + csum_offset;
    return -1;
}

static size_t segment_len(const frame_t *f, size_t i) {
    if (f->kind != 2) return f->n;
    return f->hl + (i + 1 < f->nseg ? f->gso : f->last);
}

/* Write segment i of frame f at dst (segment_len bytes): gso.split_gso's rows. */
static void build_segment(const frame_t *f, size_t i, uint8_t *dst) {
    const uint8_t *pkt = f->pkt;
    if (f->kind == 0) { memcpy(dst, pkt, f->n); return; }
    if (f->kind == 1) {
        /* gso._complete_csum: the field holds the pseudo-header sum already. */
        memcpy(dst, pkt, f->n);
        size_t start = f->csum_start;
        uint32_t csum = ~ocsum_bytes(dst + start, f->n - start, 0) & 0xFFFF;
        if (csum == 0 && f->csum_at - start == 6) {
            int l4 = (pkt[0] >> 4) == 4 ? pkt[9] : (start == 40 ? pkt[6] : -1);
            if (l4 == PROTO_UDP) csum = 0xFFFF;
        }
        wr16(dst + f->csum_at, csum);
        return;
    }
    size_t hl = f->hl, iph = f->iph, pl = i + 1 < f->nseg ? f->gso : f->last;
    size_t l4len = hl - iph + pl;
    memcpy(dst, pkt, hl);
    memcpy(dst + hl, pkt + hl + i * f->gso, pl);
    dst[f->csum_at] = dst[f->csum_at + 1] = 0;
    if (f->tcp) {
        wr32(dst + iph + 4, (uint32_t)(rd32(pkt + iph + 4) + (uint32_t)(i * f->gso)));
        if (i + 1 < f->nseg) dst[iph + 13] = pkt[iph + 13] & (uint8_t)~(TCP_FIN | TCP_PSH);
    } else {
        wr16(dst + iph + 4, (uint32_t)l4len);
    }
    if (f->v4) {
        uint32_t tot = (uint32_t)(l4len + iph), id = (uint32_t)((rd16(pkt + 4) + i) & 0xFFFF);
        wr16(dst + 2, tot);
        wr16(dst + 4, id);
        dst[10] = dst[11] = 0;
        uint64_t s = sum16(dst, iph); /* tot and id are in it now: same total as the twin's */
        uint32_t m = (uint32_t)(s % 0xFFFF);
        wr16(dst + 10, (0xFFFF - m) % 0xFFFF);
    } else {
        wr16(dst + 4, (uint32_t)(l4len + (iph - 40)));
    }
    /* Only the sum modulo 0xffff matters here: raw word sums are congruent to folded ones. */
    size_t addr_at = f->v4 ? 12 : 8, addr_len = f->v4 ? 8 : 32;
    uint64_t total = sum16(dst + iph, l4len) + l4len + sum16(pkt + addr_at, addr_len)
                     + (uint64_t)(f->tcp ? PROTO_TCP : PROTO_UDP);
    uint32_t m = (uint32_t)(total % 0xFFFF);
    if (f->tcp) wr16(dst + f->csum_at, (0xFFFF - m) % 0xFFFF);
    else wr16(dst + f->csum_at, 0xFFFF - m);
}

/* ---------------------------------------------------------------- argument checks */

/* An unsigned Python int <= max, else ValueError (PyArg's I/K formats would wrap). */
static int as_unsigned(PyObject *obj, unsigned long long max, const char *what, unsigned long long *out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    unsigned long long u = 0; /* read only when overflow > 0 (set there); -O1 cannot tell */
    if (overflow > 0) {
        u = PyLong_AsUnsignedLongLong(obj);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            overflow = -1; /* beyond 64 bits: out of range below */
        }
    }
    if (overflow < 0 || (overflow == 0 && v < 0) || (overflow == 0 ? (unsigned long long)v : u) > max) {
        PyErr_Format(PyExc_ValueError, "%s out of range", what);
        return -1;
    }
    *out = overflow == 0 ? (unsigned long long)v : u;
    return 0;
}

/* ---------------------------------------------------------------- outbound: seal */

typedef struct { Py_ssize_t size, count, bytes; } group_t;

static int seal_one(void *ctx, uint8_t *msg, size_t plain, uint32_t receiver, uint64_t counter) {
    wrle32(msg, MSG_TRANSPORT);
    wrle32(msg + 4, receiver);
    wrle64(msg + 8, counter);
    return aead_seal(ctx, msg + HEADER_LEN, plain, counter);
}

static int check_key(Py_buffer *key) {
    if (key->len != 32) {
        PyErr_SetString(PyExc_ValueError, "keys are 32 bytes");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(seal_doc,
"seal(frames, key, receiver, counter, mtu, max_bytes, vnet) -> (buffer, groups, used, drops)\n\n"
"Seal every segment of `frames` (vnet frames when `vnet`, else IP packets) with `key` and\n"
"consecutive counters from `counter`; `groups` are the (segment size, bytes) UDP_SEGMENT sends\n"
"of `buffer` in order, `used` the counters taken, `drops` a dict of frame drops by reason.");

static PyObject *dp_seal(PyObject *self, PyObject *args) {
    PyObject *frames_obj;
    Py_buffer key;
    PyObject *receiver_obj, *counter_obj;
    unsigned long long receiver, counter;
    Py_ssize_t mtu, max_bytes;
    int vnet;
    if (!PyArg_ParseTuple(args, "Oy*OOnnp", &frames_obj, &key, &receiver_obj, &counter_obj, &mtu, &max_bytes, &vnet))
        return NULL;
    if (as_unsigned(receiver_obj, 0xFFFFFFFFu, "receiver", &receiver) < 0
        || as_unsigned(counter_obj, UINT64_MAX, "counter", &counter) < 0) {
        PyBuffer_Release(&key);
        return NULL;
    }
    PyObject *result = NULL, *out = NULL, *groups_list = NULL, *drops = NULL;
    Py_buffer *views = NULL;
    frame_t *fr = NULL;
    group_t *groups = NULL;
    Py_ssize_t nviews = 0, ngroups = 0;
    size_t drop_counts[FD_COUNT] = {0};
    void *ctx = NULL;
    int failed = 0;
    PyObject *seq = NULL;

    if (check_key(&key) < 0) goto done;
    if (mtu < 0 || max_bytes <= 0) { PyErr_SetString(PyExc_ValueError, "bad mtu or max_bytes"); goto done; }
    seq = PySequence_Fast(frames_obj, "frames must be a sequence");
    if (seq == NULL) goto done;
    Py_ssize_t nframes = PySequence_Fast_GET_SIZE(seq);
    views = PyMem_Calloc((size_t)nframes + 1, sizeof *views);
    fr = PyMem_Calloc((size_t)nframes + 1, sizeof *fr);
    if (views == NULL || fr == NULL) { PyErr_NoMemory(); goto done; }
    size_t total = 0, nsegs = 0;
    for (Py_ssize_t i = 0; i < nframes; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &views[i], PyBUF_SIMPLE) < 0) goto done;
        nviews++;
        int reason = parse_frame(views[i].buf, (size_t)views[i].len, vnet, &fr[i]);
        if (reason >= 0) { fr[i].kind = -1; drop_counts[reason]++; continue; }
        for (size_t s = 0; s < fr[i].nseg; s++) {
            size_t sl = segment_len(&fr[i], s);
            total += OVERHEAD + sl + padding_size(sl, (size_t)mtu);
        }
        nsegs += fr[i].nseg;
    }
    if (nsegs && nsegs - 1 > UINT64_MAX - counter) { /* the last counter must fit 64 bits */
        PyErr_SetString(PyExc_ValueError, "counter out of range");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    groups = PyMem_Calloc(nsegs + 1, sizeof *groups);
    if (out == NULL || groups == NULL) { if (!PyErr_Occurred()) PyErr_NoMemory(); goto done; }
    ctx = aead_new(key.buf, 1);
    if (ctx == NULL) { PyErr_SetString(PyExc_RuntimeError, "ChaCha20-Poly1305 setup failed"); goto done; }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    uint64_t ctr = counter;
    Py_BEGIN_ALLOW_THREADS
    /* udp.gso_groups' rule: same-size datagrams, only the last smaller, <= 64, <= max_bytes. */
    Py_ssize_t gsize = 0, gtotal = 0;
    int open_group = 0;
    for (Py_ssize_t i = 0; i < nframes && !failed; i++) {
        if (fr[i].kind < 0) continue;
        for (size_t s = 0; s < fr[i].nseg; s++) {
            size_t sl = segment_len(&fr[i], s);
            size_t padded = sl + padding_size(sl, (size_t)mtu);
            build_segment(&fr[i], s, o + HEADER_LEN);
            memset(o + HEADER_LEN + sl, 0, padded - sl);
            if (seal_one(ctx, o, padded, receiver, ctr) < 0) { failed = 1; break; }
            ctr++;
            Py_ssize_t d = (Py_ssize_t)(OVERHEAD + padded);
            o += d;
            if (open_group && d <= gsize && groups[ngroups - 1].count < UDP_GSO_MAX_SEGMENTS
                && gtotal + d <= max_bytes) {
                groups[ngroups - 1].count++;
                groups[ngroups - 1].bytes += d;
                gtotal += d;
                if (d < gsize) open_group = 0;
                continue;
            }
            groups[ngroups].size = d;
            groups[ngroups].count = 1;
            groups[ngroups].bytes = d;
            ngroups++;
            gsize = gtotal = d;
            open_group = 1;
        }
    }
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_SetString(PyExc_RuntimeError, "ChaCha20-Poly1305 seal failed"); goto done; }
    groups_list = PyList_New(ngroups);
    drops = PyDict_New();
    if (groups_list == NULL || drops == NULL) goto done;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        PyObject *t = Py_BuildValue("(nn)", groups[g].size, groups[g].bytes);
        if (t == NULL) goto done;
        PyList_SET_ITEM(groups_list, g, t);
    }
    for (int r = 0; r < FD_COUNT; r++) {
        if (!drop_counts[r]) continue;
        PyObject *v = PyLong_FromSize_t(drop_counts[r]);
        if (v == NULL || PyDict_SetItemString(drops, frame_drop_names[r], v) < 0) { Py_XDECREF(v); goto done; }
        Py_DECREF(v);
    }
    result = Py_BuildValue("(OOKO)", out, groups_list, (unsigned long long)(ctr - counter), drops);
done:
    if (ctx) aead.freectx(ctx);
    for (Py_ssize_t i = 0; i < nviews; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(fr);
    PyMem_Free(groups);
    Py_XDECREF(seq);
    Py_XDECREF(out);
    Py_XDECREF(groups_list);
    Py_XDECREF(drops);
    PyBuffer_Release(&key);
    return result;
}

PyDoc_STRVAR(segments_doc,
"segments(frame, vnet) -> int\n\n"
"How many segments (and counters) `frame` becomes; 0 for a frame the decoder drops.");

static PyObject *dp_segments(PyObject *self, PyObject *args) {
    Py_buffer frame;
    int vnet;
    frame_t f;
    if (!PyArg_ParseTuple(args, "y*p", &frame, &vnet)) return NULL;
    int reason = parse_frame(frame.buf, (size_t)frame.len, vnet, &f);
    PyBuffer_Release(&frame);
    return PyLong_FromSize_t(reason >= 0 ? 0 : f.nseg);
}

/* ---------------------------------------------------------------- inbound: the coalescer */

/* gro._Item: one output packet being grown. Packets live in the arena as (offset, length). */
typedef struct {
    size_t first;      /* index into pk of its first packet */
    size_t npk;        /* packets in it (indices chained through pk_next) */
    size_t last_pk;
    int iph, hl, tcp, psh, closed, id_step;
    size_t gso, total;
    uint32_t next_seq, next_id;
    uint8_t m_ack[8], m_psh[8];
    int loner;         /* a packet that merges with nothing */
} item_t;

typedef struct { size_t off, len, next; } pk_t;

typedef struct {
    uint8_t key[37];
    size_t keylen;
    size_t item;
} flow_t;

typedef struct {
    PyObject_HEAD
    int vnet, udp;
    buf_t arena;
    pk_t *pk; size_t npk, cappk;
    item_t *items; size_t nitems, capitems;
    flow_t *flows; size_t nflows, capflows;
    int busy;
} Coalescer;

static int grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap * 2 : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * size);
    if (q == NULL) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static flow_t *find_flow(Coalescer *c, const uint8_t *key, size_t keylen) {
    for (size_t i = c->nflows; i-- > 0;) {
        flow_t *f = &c->flows[i];
        if (f->keylen == keylen && memcmp(f->key, key, keylen) == 0) return f;
    }
    return NULL;
}

static void drop_flow(Coalescer *c, const uint8_t *key, size_t keylen) {
    flow_t *f = find_flow(c, key, keylen);
    if (f != NULL) {
        *f = c->flows[c->nflows - 1];
        c->nflows--;
    }
}

static int new_item(Coalescer *c, size_t pki, int loner) {
    if (grow((void **)&c->items, &c->capitems, c->nitems + 1, sizeof(item_t)) < 0) return -1;
    item_t *it = &c->items[c->nitems++];
    memset(it, 0, sizeof *it);
    it->first = it->last_pk = pki;
    it->npk = 1;
    it->loner = loner;
    c->pk[pki].next = (size_t)-1;
    return 0;
}

static int ip_id_ok(item_t *it, const uint8_t *p) {
    uint32_t id = rd16(p + 4);
    if (it->id_step < 0) {
        if (id == ((it->next_id + 1) & 0xFFFF)) it->id_step = 1;
        else if (id == it->next_id && (p[6] & 0x40)) it->id_step = 0;
        else return 0;
    } else if (id != ((it->next_id + (uint32_t)it->id_step) & 0xFFFF)) {
        return 0;
    }
    it->next_id = id;
    return 1;
}

/* gro._coalesce_loop for one packet already in the arena at pk[pki]. -1 on no memory. */
static int coalesce_add(Coalescer *c, size_t pki) {
    const uint8_t *p = c->arena.p + c->pk[pki].off;
    size_t n = c->pk[pki].len;
    if (!c->vnet || n < 28) return new_item(c, pki, 1);
    uint8_t key[37];
    size_t keylen;
    int proto, iph;
    if (p[0] == 0x45) {
        if ((p[6] & 0x3F) || p[7] || rd16(p + 2) != n) return new_item(c, pki, 1);
        proto = p[9]; iph = 20;
        memcpy(key, p + 12, 12); keylen = 12;
    } else if ((p[0] >> 4) == 6 && n >= 48 && rd16(p + 4) == n - 40) {
        proto = p[6]; iph = 40;
        memcpy(key, p + 8, 36); keylen = 36;
    } else {
        return new_item(c, pki, 1);
    }
    int tcp, hl, flags = 0;
    uint32_t seq = 0;
    if (proto == PROTO_TCP && n >= (size_t)iph + 20) {
        flags = p[iph + 13];
        hl = iph + (p[iph + 12] >> 4) * 4;
        if ((flags != TCP_ACK && flags != (TCP_ACK | TCP_PSH)) || hl < iph + 20 || (size_t)hl >= n) {
            drop_flow(c, key, keylen);
            return new_item(c, pki, 1);
        }
        tcp = 1;
        seq = rd32(p + iph + 4);
    } else if (proto == PROTO_UDP && c->udp) {
        key[keylen++] = 'u';
        hl = iph + 8;
        if ((size_t)hl >= n || (iph == 20 && !(p[26] || p[27]))) {
            drop_flow(c, key, keylen);
            return new_item(c, pki, 1);
        }
        tcp = 0;
    } else {
        return new_item(c, pki, 1);
    }
    flow_t *fl = find_flow(c, key, keylen);
    if (fl != NULL) {
        item_t *it = &c->items[fl->item];
        if (!it->closed && hl == it->hl) {
            size_t plen = n - (size_t)hl;
            const uint8_t *f = c->arena.p + c->pk[it->first].off;
            int ok = plen <= it->gso && it->total + plen <= MAX_COALESCED_LEN;
            if (ok) {
                if (iph == 20) ok = p[1] == f[1] && p[8] == f[8] && !((p[6] ^ f[6]) & 0xE0);
                else ok = memcmp(p, f, 4) == 0 && p[7] == f[7];
            }
            if (ok) {
                if (tcp) {
                    ok = seq == it->next_seq
                         && memcmp(p + iph + 8, flags == TCP_ACK ? it->m_ack : it->m_psh, 8) == 0
                         && (hl == iph + 20 || memcmp(p + iph + 20, f + iph + 20, (size_t)(hl - iph - 20)) == 0);
                } else {
                    ok = it->npk < UDP_MAX_COALESCE;
                }
            }
            if (ok && iph == 20) ok = ip_id_ok(it, p);
            if (ok) {
                c->pk[it->last_pk].next = pki;
                c->pk[pki].next = (size_t)-1;
                it->last_pk = pki;
                it->npk++;
                it->total += plen;
                it->next_seq = seq + (uint32_t)plen;
                if (plen < it->gso) it->closed = 1;
                if (flags & TCP_PSH) it->psh = it->closed = 1;
                return 0;
            }
        }
    }
    if (new_item(c, pki, 0) < 0) return -1;
    item_t *it = &c->items[c->nitems - 1];
    it->iph = iph; it->hl = hl; it->tcp = tcp;
    it->gso = n - (size_t)hl;
    it->total = n;
    it->next_seq = seq + (uint32_t)it->gso;
    it->psh = it->closed = (flags & TCP_PSH) ? 1 : 0;
    it->id_step = -1;
    it->next_id = iph == 20 ? rd16(p + 4) : 0;
    if (tcp) {
        memcpy(it->m_ack, p + iph + 8, 8);
        it->m_ack[5] = TCP_ACK;
        memcpy(it->m_psh, p + iph + 8, 8);
        it->m_psh[5] = TCP_ACK | TCP_PSH;
    }
    if (fl == NULL) {
        if (grow((void **)&c->flows, &c->capflows, c->nflows + 1, sizeof(flow_t)) < 0) return -1;
        fl = &c->flows[c->nflows++];
        memcpy(fl->key, key, keylen);
        fl->keylen = keylen;
    }
    fl->item = c->nitems - 1;
    return 0;
}

/* Room for one more packet of up to `len` bytes in the arena; its index, or -1. */
static Py_ssize_t reserve_packet(Coalescer *c, size_t len) {
    if (buf_reserve(&c->arena, len) < 0) return -1;
    if (grow((void **)&c->pk, &c->cappk, c->npk + 1, sizeof(pk_t)) < 0) return -1;
    c->pk[c->npk].off = c->arena.len;
    c->pk[c->npk].len = len;
    return (Py_ssize_t)c->npk;
}

static void coalescer_reset(Coalescer *c) {
    c->arena.len = 0;
    c->npk = c->nitems = c->nflows = 0;
}

static PyObject *Coalescer_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"vnet", "udp", NULL};
    int vnet = 1, udp = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$pp", kwlist, &vnet, &udp)) return NULL;
    Coalescer *c = (Coalescer *)type->tp_alloc(type, 0);
    if (c == NULL) return NULL;
    c->vnet = vnet;
    c->udp = udp;
    return (PyObject *)c;
}

static void Coalescer_dealloc(Coalescer *c) {
    free(c->arena.p);
    free(c->pk);
    free(c->items);
    free(c->flows);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static int busy_error(Coalescer *c) {
    if (c->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Coalescer used by two threads at once");
        return -1;
    }
    return 0;
}

static PyObject *Coalescer_add(Coalescer *c, PyObject *arg) {
    Py_buffer b;
    if (busy_error(c) < 0) return NULL;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t i = reserve_packet(c, (size_t)b.len);
    if (i < 0) { PyBuffer_Release(&b); return PyErr_NoMemory(); }
    memcpy(c->arena.p + c->arena.len, b.buf, (size_t)b.len);
    c->arena.len += (size_t)b.len;
    c->npk++;
    PyBuffer_Release(&b);
    if (coalesce_add(c, (size_t)i) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* gro._emit: the merged packet with a GSO header and a CHECKSUM_PARTIAL L4 checksum field. */
static PyObject *emit(Coalescer *c, const item_t *it) {
    const uint8_t *first = c->arena.p + c->pk[it->first].off;
    size_t hl = (size_t)it->hl, iph = (size_t)it->iph, total = it->total;
    size_t size = (c->vnet ? VNET_HDR_LEN : 0) + total;
    PyObject *frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (frame == NULL) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(frame);
    uint8_t *h = o + VNET_HDR_LEN;
    memcpy(h, first, hl);
    const uint8_t *addrs;
    size_t addr_len;
    int gso_type;
    if (iph == 20) {
        wr16(h + 2, (uint32_t)total);
        h[10] = h[11] = 0;
        wr16(h + 10, ~ocsum_bytes(h, 20, 0) & 0xFFFF);
        addrs = first + 12; addr_len = 8;
        gso_type = it->tcp ? GSO_TCPV4 : GSO_UDP_L4;
    } else {
        wr16(h + 4, (uint32_t)(total - 40));
        addrs = first + 8; addr_len = 32;
        gso_type = it->tcp ? GSO_TCPV6 : GSO_UDP_L4;
    }
    size_t l4len = total - iph, csum_offset;
    int proto;
    if (it->tcp) {
        if (it->psh) h[iph + 13] |= TCP_PSH;
        csum_offset = 16; proto = PROTO_TCP;
    } else {
        wr16(h + iph + 4, (uint32_t)l4len);
        csum_offset = 6; proto = PROTO_UDP;
    }
    wr16(h + iph + csum_offset, fold32((uint64_t)ocsum_bytes(addrs, addr_len, 0) + (uint64_t)proto + l4len));
    o[0] = F_NEEDS_CSUM;
    o[1] = (uint8_t)gso_type;
    wrne16(o + 2, (uint16_t)hl);
    wrne16(o + 4, (uint16_t)it->gso);
    wrne16(o + 6, (uint16_t)iph);
    wrne16(o + 8, (uint16_t)csum_offset);
    size_t at = VNET_HDR_LEN + hl;
    memcpy(o + at, first + hl, c->pk[it->first].len - hl);
    at += c->pk[it->first].len - hl;
    for (size_t k = c->pk[it->first].next; k != (size_t)-1; k = c->pk[k].next) {
        memcpy(o + at, c->arena.p + c->pk[k].off + hl, c->pk[k].len - hl);
        at += c->pk[k].len - hl;
    }
    return frame;
}

static PyObject *plain_frame(Coalescer *c, size_t k) {
    size_t pre = c->vnet ? VNET_HDR_LEN : 0, len = c->pk[k].len;
    PyObject *frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(pre + len));
    if (frame == NULL) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(frame);
    memset(o, 0, pre);
    memcpy(o + pre, c->arena.p + c->pk[k].off, len);
    return frame;
}

static PyObject *Coalescer_finish(Coalescer *c, PyObject *unused) {
    if (busy_error(c) < 0) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (size_t i = 0; i < c->nitems; i++) {
        const item_t *it = &c->items[i];
        PyObject *f = it->npk > 1 ? emit(c, it) : plain_frame(c, it->first);
        if (f == NULL || PyList_Append(out, f) < 0) {
            Py_XDECREF(f);
            Py_DECREF(out);
            coalescer_reset(c);
            return NULL;
        }
        Py_DECREF(f);
    }
    coalescer_reset(c);
    return out;
}

static PyObject *Coalescer_len(Coalescer *c, PyObject *unused) { return PyLong_FromSize_t(c->npk); }

/* ---------------------------------------------------------------- inbound: open a run */

static PyTypeObject CoalescerType;

/* Drop reasons of open_run, in the order of wiretun.datapath.pure.OPEN_DROPS. */
enum { OD_REPLAY, OD_DECRYPT, OD_BAD_PACKET, OD_ALLOWED_IPS, OD_COUNT };

/* Is `src` (4 or 16 bytes) allowed by `table`: entries of (address, prefix length, allow)
 * with stride 8 (IPv4) or 24 (IPv6); the longest matching entry decides. */
static int source_allowed(const uint8_t *table, size_t tlen, const uint8_t *src, size_t alen) {
    size_t stride = alen == 4 ? 8 : 24;
    int best = -1, allow = 0;
    for (size_t e = 0; e + stride <= tlen; e += stride) {
        const uint8_t *ent = table + e;
        int plen = ent[alen];
        if (plen <= best || (size_t)plen > alen * 8) continue;
        size_t whole = (size_t)plen / 8, rest = (size_t)plen % 8;
        if (memcmp(ent, src, whole) != 0) continue;
        if (rest) {
            uint8_t mask = (uint8_t)(0xFF << (8 - rest));
            if ((ent[whole] ^ src[whole]) & mask) continue;
        }
        best = plen;
        allow = ent[alen + 1];
    }
    return allow;
}

/* replay.ReplayWindow.check_and_mark on (ring, next = last + 1). */
static int replay_mark(uint8_t *ring, uint64_t *next, uint64_t counter) {
    if (counter >= *next) {
        if (counter >= REJECT_AFTER_MESSAGES) return 0;
        uint64_t gap = counter - *next + 1; /* counter - last */
        if (gap > 1) {
            if (gap >= RING_SIZE) {
                memset(ring, 0, RING_SIZE);
            } else {
                size_t start = (size_t)(*next & RING_MASK), end = (size_t)(counter & RING_MASK);
                if (start < end) memset(ring + start, 0, end - start);
                else { memset(ring + start, 0, RING_SIZE - start); memset(ring, 0, end); }
            }
        }
        ring[counter & RING_MASK] = 1;
        *next = counter + 1;
        return 1;
    }
    /* counter <= last */
    if (*next - 1 - counter > WINDOW_SIZE) return 0;
    if (ring[counter & RING_MASK]) return 0;
    ring[counter & RING_MASK] = 1;
    return 1;
}

PyDoc_STRVAR(open_run_doc,
"open_run(buffer, offset, segment, key, receiver, ring, next, allowed_v4, allowed_v6, coalescer)\n"
"    -> (offset, next, opened, rx_bytes, data, drops)\n\n"
"Open the transport messages for `receiver` in `buffer` (datagrams of `segment` bytes, the\n"
"last maybe shorter) from `offset` on, stopping at the first datagram that is not one of\n"
"them. `ring`/`next` are the replay window (ring of 8192, next = newest counter + 1), updated\n"
"in place / returned. Packets whose source `allowed_*` permit go to `coalescer`. `drops` is\n"
"(replay, decrypt, bad_packet, allowed_ips).");

static PyObject *dp_open_run(PyObject *self, PyObject *args) {
    Py_buffer data, key, ring, a4, a6;
    Py_ssize_t offset, segment;
    PyObject *receiver_obj, *next_obj;
    unsigned long long receiver, next;
    PyObject *cobj;
    if (!PyArg_ParseTuple(args, "y*nny*Ow*Oy*y*O", &data, &offset, &segment, &key, &receiver_obj, &ring,
                          &next_obj, &a4, &a6, &cobj))
        return NULL;
    PyObject *result = NULL;
    void *ctx = NULL;
    Coalescer *c = NULL;
    size_t drops[OD_COUNT] = {0};
    size_t opened = 0, rx = 0;
    int got_data = 0, failed = 0;
    if (as_unsigned(receiver_obj, 0xFFFFFFFFu, "receiver", &receiver) < 0
        || as_unsigned(next_obj, REJECT_AFTER_MESSAGES, "replay position", &next) < 0)
        goto done;
    if (!PyObject_TypeCheck(cobj, &CoalescerType)) {
        PyErr_SetString(PyExc_TypeError, "coalescer must be a wiretun.datapath._native.Coalescer");
        goto done;
    }
    if (check_key(&key) < 0) goto done;
    if (ring.len != RING_SIZE) { PyErr_SetString(PyExc_ValueError, "ring must be 8192 bytes"); goto done; }
    if (offset < 0 || segment <= 0 || offset > data.len) { PyErr_SetString(PyExc_ValueError, "bad offset or segment"); goto done; }
    c = (Coalescer *)cobj;
    if (busy_error(c) < 0) goto done;
    ctx = aead_new(key.buf, 0);
    if (ctx == NULL) { PyErr_SetString(PyExc_RuntimeError, "ChaCha20-Poly1305 setup failed"); goto done; }
    c->busy = 1;
    const uint8_t *buf = data.buf;
    size_t len = (size_t)data.len, pos = (size_t)offset, seg = (size_t)segment;
    uint8_t *rg = ring.buf;
    uint64_t nx = next;
    Py_BEGIN_ALLOW_THREADS
    while (pos < len) {
        const uint8_t *d = buf + pos;
        size_t n = len - pos < seg ? len - pos : seg;
        if (n < OVERHEAD || rdle32(d) != MSG_TRANSPORT || rdle32(d + 4) != receiver) break;
        pos += n;
        uint64_t counter = rdle64(d + 8);
        if (counter < nx) {
            if (nx - 1 - counter > WINDOW_SIZE || rg[counter & RING_MASK]) { drops[OD_REPLAY]++; continue; }
        } else if (counter >= REJECT_AFTER_MESSAGES) {
            drops[OD_REPLAY]++;
            continue;
        }
        size_t plain = n - OVERHEAD;
        Py_ssize_t k = reserve_packet(c, plain);
        if (k < 0) { failed = 1; break; }
        uint8_t *p = c->arena.p + c->pk[k].off;
        if (aead_open(ctx, p, d + HEADER_LEN, plain, d + n - TAG_LEN, counter) < 0) {
            drops[OD_DECRYPT]++;
            continue;
        }
        if (!replay_mark(rg, &nx, counter)) { drops[OD_REPLAY]++; continue; }
        opened++;
        rx += n;
        if (plain == 0) continue; /* keepalive */
        int version = p[0] >> 4;
        size_t length;
        const uint8_t *source;
        size_t alen;
        if (version == 4 && plain >= 20) {
            length = rd16(p + 2);
            if (length < 20) length = plain + 1;
            source = p + 12; alen = 4;
        } else if (version == 6 && plain >= 40) {
            length = 40 + (size_t)rd16(p + 4);
            source = p + 8; alen = 16;
        } else {
            drops[OD_BAD_PACKET]++;
            continue;
        }
        if (length > plain) { drops[OD_BAD_PACKET]++; continue; }
        if (!source_allowed(alen == 4 ? a4.buf : a6.buf, (size_t)(alen == 4 ? a4.len : a6.len), source, alen)) {
            drops[OD_ALLOWED_IPS]++;
            continue;
        }
        got_data = 1;
        c->pk[k].len = length;
        c->arena.len += length;
        c->npk++;
        if (coalesce_add(c, (size_t)k) < 0) { failed = 1; break; }
    }
    Py_END_ALLOW_THREADS
    c->busy = 0;
    if (failed) { PyErr_NoMemory(); goto done; }
    result = Py_BuildValue("(nKnni(nnnn))", (Py_ssize_t)pos, (unsigned long long)nx, (Py_ssize_t)opened,
                           (Py_ssize_t)rx, got_data, (Py_ssize_t)drops[0], (Py_ssize_t)drops[1],
                           (Py_ssize_t)drops[2], (Py_ssize_t)drops[3]);
done:
    if (ctx) aead.freectx(ctx);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    PyBuffer_Release(&ring);
    PyBuffer_Release(&a4);
    PyBuffer_Release(&a6);
    return result;
}

/* ---------------------------------------------------------------- module */

static PyMethodDef Coalescer_methods[] = {
    {"add", (PyCFunction)Coalescer_add, METH_O, "Add one IP packet (copied)."},
    {"finish", (PyCFunction)Coalescer_finish, METH_NOARGS, "The TUN frames of what was added; empties it."},
    {"pending", (PyCFunction)Coalescer_len, METH_NOARGS, "Packets added since the last finish()."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoalescerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wiretun.datapath._native.Coalescer",
    .tp_doc = "Packets in, TUN write frames out, merged as the kernel's GRO would (gro.coalesce).",
    .tp_basicsize = sizeof(Coalescer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Coalescer_new,
    .tp_dealloc = (destructor)Coalescer_dealloc,
    .tp_methods = Coalescer_methods,
};

static PyMethodDef methods[] = {
    {"seal", dp_seal, METH_VARARGS, seal_doc},
    {"segments", dp_segments, METH_VARARGS, segments_doc},
    {"open_run", dp_open_run, METH_VARARGS, open_run_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "wiretun.datapath._native",
    "The per-segment work of the WireGuard data path (see wiretun.datapath.pure).", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    have_avx = __builtin_cpu_supports("avx");
#endif
    chacha = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (chacha == NULL) {
        PyErr_SetString(PyExc_ImportError, "libcrypto has no ChaCha20-Poly1305");
        return NULL;
    }
    if (aead_load() < 0) {
        PyErr_SetString(PyExc_ImportError, "libcrypto's ChaCha20-Poly1305 provider lacks a cipher function");
        return NULL;
    }
    if (PyType_Ready(&CoalescerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    Py_INCREF(&CoalescerType);
    if (PyModule_AddObject(m, "Coalescer", (PyObject *)&CoalescerType) < 0) {
        Py_DECREF(&CoalescerType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_SEGMENTS", MAX_SEGMENTS) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
