// Small device helpers shared by the CUDA kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace steerkern::cuda {

// `count` elements of T moved as one aligned access (16 bytes when count = 16 / sizeof(T)).
template <typename T, int count>
struct alignas(sizeof(T) * count) Pack {
  T v[count];
};

template <typename T, int count>
__device__ __forceinline__ Pack<T, count> load_pack(const T* ptr) {
  return *reinterpret_cast<const Pack<T, count>*>(ptr);
}

// The same load through the read-only data cache, for data no thread writes (dictionary rows).
template <typename T, int count>
__device__ __forceinline__ Pack<T, count> load_pack_cached(const T* ptr) {
  using Bits = Pack<T, count>;
  Bits out;
  if constexpr (sizeof(Bits) % 16 == 0) {
    const auto* words = reinterpret_cast<const int4*>(ptr);
    auto* dst = reinterpret_cast<int4*>(&out);
#pragma unroll
    for (int i = 0; i < static_cast<int>(sizeof(Bits) / 16); ++i) dst[i] = __ldg(words + i);
  } else if constexpr (sizeof(Bits) == 4) {
    *reinterpret_cast<unsigned int*>(&out) = __ldg(reinterpret_cast<const unsigned int*>(ptr));
  } else if constexpr (sizeof(Bits) == 2) {
    *reinterpret_cast<unsigned short*>(&out) = __ldg(reinterpret_cast<const unsigned short*>(ptr));
  } else {
    out = load_pack<T, count>(ptr);
  }
  return out;
}

template <typename T, int count>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, count>& pack) {
  *reinterpret_cast<Pack<T, count>*>(ptr) = pack;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ReLU that keeps NaN, as torch.relu does.
__device__ __forceinline__ float relu(float v) { return v < 0.f ? 0.f : v; }

// Streaming multiprocessors of the current device, looked up once per device.
inline int multiprocessor_count(int device) {
  static int counts[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (counts[device] == 0) {
    cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device);
  }
  return counts[device] > 0 ? counts[device] : 132;
}

}  // namespace steerkern::cuda
