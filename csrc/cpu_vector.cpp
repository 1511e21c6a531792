#include "cpu_vector.h"

#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STEERKERN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STEERKERN_CLONES
#endif

namespace steerkern::cpu {
namespace {

// bfloat16 <-> float32 on the bits, written so the compiler vectorises the loops.
inline float widen(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline float widen(float v) { return v; }
inline float widen(c10::Half v) { return static_cast<float>(v); }

inline void narrow(float v, float* out) { *out = v; }
inline void narrow(float v, c10::Half* out) { *out = c10::Half(v); }
inline void narrow(float v, c10::BFloat16* out) {
  // Round to nearest even, NaN to the canonical quiet NaN: the same result as c10's conversion.
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  out->x = static_cast<uint16_t>(v != v ? 0x7FC0u : rounded);
}

template <typename T>
inline void load_impl(float* __restrict x, const T* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = widen(src[i]);
}

template <typename T>
inline void store_impl(T* __restrict dst, const float* __restrict x, const float* __restrict delta, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) narrow(x[i] + delta[i], dst + i);
}

template <typename W>
inline float dot_impl(const float* __restrict x, const W* __restrict w, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i] * widen(w[i]);
  return acc;
}

template <typename W>
inline void axpy_impl(float* __restrict y, float a, const W* __restrict w, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * widen(w[i]);
}

}  // namespace

STEERKERN_CLONES void load_row(float* x, const float* src, int64_t n) { std::memcpy(x, src, n * sizeof(float)); }
STEERKERN_CLONES void load_row(float* x, const c10::BFloat16* src, int64_t n) { load_impl(x, src, n); }
STEERKERN_CLONES void load_row(float* x, const c10::Half* src, int64_t n) { load_impl(x, src, n); }

STEERKERN_CLONES void store_row(float* dst, const float* x, const float* delta, int64_t n) {
  store_impl(dst, x, delta, n);
}
STEERKERN_CLONES void store_row(c10::BFloat16* dst, const float* x, const float* delta, int64_t n) {
  store_impl(dst, x, delta, n);
}
STEERKERN_CLONES void store_row(c10::Half* dst, const float* x, const float* delta, int64_t n) {
  store_impl(dst, x, delta, n);
}

STEERKERN_CLONES float dot(const float* x, const float* w, int64_t n) { return dot_impl(x, w, n); }
STEERKERN_CLONES float dot(const float* x, const c10::BFloat16* w, int64_t n) { return dot_impl(x, w, n); }
STEERKERN_CLONES float dot(const float* x, const c10::Half* w, int64_t n) { return dot_impl(x, w, n); }

STEERKERN_CLONES void axpy(float* y, float a, const float* w, int64_t n) { axpy_impl(y, a, w, n); }
STEERKERN_CLONES void axpy(float* y, float a, const c10::BFloat16* w, int64_t n) { axpy_impl(y, a, w, n); }
STEERKERN_CLONES void axpy(float* y, float a, const c10::Half* w, int64_t n) { axpy_impl(y, a, w, n); }

}  // namespace steerkern::cpu
