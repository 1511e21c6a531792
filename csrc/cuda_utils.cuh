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
