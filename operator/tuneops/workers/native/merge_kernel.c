/* The streaming merge's LoRA delta, fused into one pass over a block of rows of a weight:
 *
 *   out = round_out(w' + (B @ A) * scaling),  w' = round_out(w)
 *
 * The arithmetic is peft's on CPU, operation for operation. Each element of the delta is a chain of fused
 * multiply-adds over the rank, k = 0..r-1 from +0, in float32: the order the BLAS sums a product of rank r
 * in, for the shapes merge.py sends here. It is then multiplied by the scaling (rounded on its own), added
 * to the weight in float32 and rounded once (to nearest even) into the output dtype. A weight whose dtype
 * the output narrows is rounded to it first, as `w.to(dtype)` does before the add.
 *
 * Returns 0; 1 when any result is a NaN (the caller redoes the block with torch: NaN payloads differ
 * between conversion routines); 2 for a dtype code it does not know.
 *
 * Build: cc -O2 -shared -fPIC -ffp-contract=off (the multiply by the scaling and the add must each round);
 * x86-64 CPUs with AVX2 and FMA take the vector path, chosen at run time; others the scalar one (the same
 * results, fmaf being exact everywhere).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { F32 = 0, F16 = 1, BF16 = 2 };

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even (NaN: caught by the caller) */
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

#ifdef __FLT16_MAX__
typedef _Float16 f16_t;
#define HAVE_F16 1
#else
#define HAVE_F16 0
#endif

static inline float load1(const void *w, int code, int64_t at) {
  if (code == F32) return ((const float *)w)[at];
  if (code == BF16) return bf16_to_f32(((const uint16_t *)w)[at]);
#if HAVE_F16
  return (float)((const f16_t *)w)[at];
#else
  return NAN;
#endif
}

static inline float round1(int code, float x) {
  if (code == BF16) return bf16_to_f32(f32_to_bf16(x));
#if HAVE_F16
  if (code == F16) return (float)(f16_t)x;
#endif
  return x;
}

static inline void store1(void *out, int code, int64_t at, float x) {
  if (code == F32) {
    ((float *)out)[at] = x;
  } else if (code == BF16) {
    ((uint16_t *)out)[at] = f32_to_bf16(x);
  } else {
#if HAVE_F16
    ((f16_t *)out)[at] = (f16_t)x;
#endif
  }
}

/* Columns [c0, c1) of every row, one element at a time. */
static int scalar_cols(const void *w, int in, void *out, int oc, const float *b, const float *a, int64_t rows,
                       int64_t cols, int64_t rank, float scaling, int64_t c0, int64_t c1) {
  int nan = 0;
  for (int64_t r = 0; r < rows; r++) {
    const float *br = b + r * rank;
    for (int64_t c = c0; c < c1; c++) {
      float acc = 0.0f;
      for (int64_t k = 0; k < rank; k++) acc = fmaf(br[k], a[k * cols + c], acc);
      const float d = acc * scaling;
      float x = load1(w, in, r * cols + c);
      if (oc != in) x = round1(oc, x);
      x = x + d;
      nan |= x != x;
      store1(out, oc, r * cols + c, x);
    }
  }
  return nan;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VEC 1
#define W 32 /* columns per block: four 8-float accumulators held in registers across the rank */
#define ROWS 8

__attribute__((target("avx2,fma,f16c"))) static inline __m256 vload(const void *w, int code, int64_t at) {
  if (code == F32) return _mm256_loadu_ps((const float *)w + at);
  if (code == BF16) {
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + at));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + at)));
}

__attribute__((target("avx2,fma,f16c"))) static inline __m256i bf16_bits(__m256 x) { /* in 32-bit lanes */
  __m256i u = _mm256_castps_si256(x);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
  return _mm256_srli_epi32(u, 16);
}

__attribute__((target("avx2,fma,f16c"))) static inline __m256 vround(int code, __m256 x) {
  if (code == BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(x), 16));
  if (code == F16) return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return x;
}

/* Eight results stored; two bf16 blocks are packed together by the caller for a full 16-byte store. */
__attribute__((target("avx2,fma,f16c"))) static inline void vstore(void *out, int code, int64_t at, __m256 x) {
  if (code == F32) {
    _mm256_storeu_ps((float *)out + at, x);
  } else if (code == BF16) {
    __m256i v = bf16_bits(x);
    __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storeu_si128((__m128i *)((uint16_t *)out + at), p);
  } else {
    _mm_storeu_si128((__m128i *)((uint16_t *)out + at),
                     _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

/* The epilogue of 32 columns of one row: w + acc * scaling, rounded, stored. */
__attribute__((target("avx2,fma,f16c"))) static inline __m256 finish(const void *w, int in, void *out, int oc,
                                                                    int64_t at, const __m256 acc[4], __m256 s,
                                                                    __m256 nan) {
  for (int j = 0; j < 4; j++) {
    __m256 x = vload(w, in, at + 8 * j);
    if (oc != in) x = vround(oc, x);
    x = _mm256_add_ps(x, _mm256_mul_ps(acc[j], s));
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    vstore(out, oc, at + 8 * j, x);
  }
  return nan;
}

__attribute__((target("avx2,fma,f16c"))) static int vector_cols(const void *w, int in, void *out, int oc,
                                                                const float *b, const float *a, int64_t rows,
                                                                int64_t cols, int64_t rank, float scaling,
                                                                int64_t c1) {
  const __m256 s = _mm256_set1_ps(scaling);
  __m256 nan = _mm256_setzero_ps();
  for (int64_t r0 = 0; r0 < rows; r0 += ROWS) { /* A (rank x cols) stays in L2 */
    const int64_t r1 = r0 + ROWS < rows ? r0 + ROWS : rows;
    for (int64_t c0 = 0; c0 < c1; c0 += W) { /* its column block (rank x 32) in L1 across the rows */
      int64_t r = r0;
      for (; r + 1 < r1; r += 2) { /* two rows at once: eight independent chains keep both FMA units busy */
        const float *b0 = b + r * rank, *b1 = b0 + rank;
        const float *ak = a + c0;
        __m256 p[4], q[4];
        for (int j = 0; j < 4; j++) p[j] = q[j] = _mm256_setzero_ps();
        for (int64_t k = 0; k < rank; k++, ak += cols) {
          const __m256 x0 = _mm256_broadcast_ss(b0 + k), x1 = _mm256_broadcast_ss(b1 + k);
          for (int j = 0; j < 4; j++) {
            const __m256 v = _mm256_loadu_ps(ak + 8 * j);
            p[j] = _mm256_fmadd_ps(x0, v, p[j]);
            q[j] = _mm256_fmadd_ps(x1, v, q[j]);
          }
        }
        nan = finish(w, in, out, oc, r * cols + c0, p, s, nan);
        nan = finish(w, in, out, oc, (r + 1) * cols + c0, q, s, nan);
      }
      for (; r < r1; r++) {
        const float *b0 = b + r * rank;
        const float *ak = a + c0;
        __m256 p[4];
        for (int j = 0; j < 4; j++) p[j] = _mm256_setzero_ps();
        for (int64_t k = 0; k < rank; k++, ak += cols) {
          const __m256 x0 = _mm256_broadcast_ss(b0 + k);
          for (int j = 0; j < 4; j++) p[j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(ak + 8 * j), p[j]);
        }
        nan = finish(w, in, out, oc, r * cols + c0, p, s, nan);
      }
    }
  }
  return _mm256_movemask_ps(nan) != 0;
}
#else
#define VEC 0
#define W 1
#endif

/* Which path this CPU takes: 1 vector, 0 scalar. */
int tuneops_lora_merge_vector(void) {
#if VEC
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return 0;
#endif
}

int tuneops_lora_merge_rows(const void *w, int in_code, void *out, int out_code, const float *b,
                            const float *a, int64_t rows, int64_t cols, int64_t rank, float scaling) {
  if (in_code < F32 || in_code > BF16 || out_code < F32 || out_code > BF16) return 2;
  if (!HAVE_F16 && (in_code == F16 || out_code == F16)) return 2;
  int64_t done = 0;
  int nan = 0;
#if VEC
  if (tuneops_lora_merge_vector()) {
    done = cols / W * W;
    nan |= vector_cols(w, in_code, out, out_code, b, a, rows, cols, rank, scaling, done);
  }
#endif
  if (done < cols) nan |= scalar_cols(w, in_code, out, out_code, b, a, rows, cols, rank, scaling, done, cols);
  return nan;
}
