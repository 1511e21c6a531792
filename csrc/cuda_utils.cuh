// Small device helpers shared by the CUDA kernels: 16-byte loads and stores of element packs
// converted to and from float32, element loads through the read-only cache, warp sums, ReLU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace steerkern::cuda {

// 16 bytes of elements of T, the unit of a vector load or store.
template <typename T>
struct alignas(16) Chunk {
  static constexpr int kCount = 16 / sizeof(T);
  T v[kCount];
};

__device__ __forceinline__ bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// N elements of T at ptr (16-byte aligned, N * sizeof(T) a multiple of 16) as float32, read
// through the read-only data cache: for data no thread of the kernel writes (dictionary rows).
template <typename T, int N>
__device__ __forceinline__ void load_readonly(const T* ptr, float (&out)[N]) {
  constexpr int per = Chunk<T>::kCount;
  static_assert(N % per == 0, "whole 16-byte chunks only");
#pragma unroll
  for (int q = 0; q < N / per; ++q) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(ptr) + q);
    Chunk<T> chunk;
    memcpy(&chunk, &raw, sizeof(raw));
#pragma unroll
    for (int j = 0; j < per; ++j) out[q * per + j] = static_cast<float>(chunk.v[j]);
  }
}

// One element of T at ptr (any element-aligned address) as float32, through the read-only cache.
template <typename T>
__device__ __forceinline__ float load_readonly(const T* ptr) {
  if constexpr (std::is_same_v<T, float>) {
    return __ldg(ptr);
  } else {
    static_assert(sizeof(T) == 2, "float32 or a 16-bit type");
    const unsigned short bits = __ldg(reinterpret_cast<const unsigned short*>(ptr));
    T value;
    memcpy(&value, &bits, sizeof(bits));
    return static_cast<float>(value);
  }
}

// One 16-byte pack of T at ptr (16-byte aligned) as float32, marked for streaming: data read
// once and written back once (rows of hidden), which should not push reused data out of cache.
template <typename T>
__device__ __forceinline__ void load_streaming(const T* ptr, float (&out)[Chunk<T>::kCount]) {
  const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(ptr));
  Chunk<T> chunk;
  memcpy(&chunk, &raw, sizeof(raw));
#pragma unroll
  for (int j = 0; j < Chunk<T>::kCount; ++j) out[j] = static_cast<float>(chunk.v[j]);
}

// Rounds the floats once to T (round to nearest even) and stores them as one 16-byte pack.
template <typename T>
__device__ __forceinline__ void store_streaming(T* ptr, const float (&in)[Chunk<T>::kCount]) {
  Chunk<T> chunk;
#pragma unroll
  for (int j = 0; j < Chunk<T>::kCount; ++j) chunk.v[j] = static_cast<T>(in[j]);
  uint4 raw;
  memcpy(&raw, &chunk, sizeof(raw));
  __stcs(reinterpret_cast<uint4*>(ptr), raw);
}

// Asks L2 for the line holding ptr (in a global allocation), without waiting or holding a register.
__device__ __forceinline__ void prefetch_l2(const void* ptr) { asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ReLU that keeps NaN, as torch.relu does.
__device__ __forceinline__ float relu(float v) { return v < 0.f ? 0.f : v; }

}  // namespace steerkern::cuda
