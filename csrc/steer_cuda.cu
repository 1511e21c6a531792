// CUDA kernel of steerkern::steer_: a block owns one row at a time (grid-stride over rows). The
// row is read once with 16-byte loads and kept in shared memory as float32, laid out so that a
// warp's accesses never share a bank; the K detection dots are reduced across the block; the
// update is written back with 16-byte stores. Dictionary rows are read through the read-only
// cache and stay in L1/L2 across rows that share a program.
#include "cuda_utils.cuh"
#include "steer.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

namespace steerkern {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kBlocksPerSm = 16;

struct SteerParams {
  void* hidden;
  const void* dictionary;
  const int64_t* ids;
  const float* coeffs;
  const bool* mask;
  const float* bias;
  float* acts;
  int64_t rows, d, slots, concepts, rows_per_program;
  Mode mode;
};

// Shared memory: the slots' slot_concept rows, coefficients and per-warp partial dots, then the row.
inline size_t shared_bytes(int64_t slots, int64_t d) {
  const size_t header = slots * sizeof(int64_t) + slots * sizeof(float) + kWarps * slots * sizeof(float);
  return (header + 15) / 16 * 16 + d * sizeof(float);
}

// The row in shared memory, pack i (VEC elements) of `packs`. With VEC a multiple of 4 it is kept
// in VEC / 4 planes of float4, plane q holding elements 4q..4q+3 of every pack, so consecutive
// threads touch consecutive 16 bytes: half-precision packs (VEC = 8) stored whole would put lanes
// 32 bytes apart, and their accesses serialise on bank conflicts. Otherwise (the unaligned path,
// VEC = 1) plain floats, already consecutive.
template <int VEC>
__device__ __forceinline__ void store_row_pack(float* x, int64_t packs, int64_t i, const float (&v)[VEC]) {
  if constexpr (VEC % 4 == 0) {
    auto* planes = reinterpret_cast<float4*>(x);
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      planes[q * packs + i] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[i * VEC + j] = v[j];
  }
}

template <int VEC>
__device__ __forceinline__ void load_row_pack(const float* x, int64_t packs, int64_t i, float (&v)[VEC]) {
  if constexpr (VEC % 4 == 0) {
    const auto* planes = reinterpret_cast<const float4*>(x);
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      const float4 f = planes[q * packs + i];
      v[4 * q] = f.x, v[4 * q + 1] = f.y, v[4 * q + 2] = f.z, v[4 * q + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = x[i * VEC + j];
  }
}

template <typename scalar_t, typename dict_t, int VEC>
__global__ void __launch_bounds__(kThreads) steer_kernel(SteerParams p) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t slots = p.slots, d = p.d, packs = d / VEC;
  auto* slot_concept = reinterpret_cast<int64_t*>(shared);
  float* coef = reinterpret_cast<float*>(slot_concept + slots);
  float* partial = coef + slots;
  const size_t header = slots * sizeof(int64_t) + slots * sizeof(float) + kWarps * slots * sizeof(float);
  float* x = reinterpret_cast<float*>(shared + (header + 15) / 16 * 16);

  auto* hidden = static_cast<scalar_t*>(p.hidden);
  const auto* __restrict__ dictionary = static_cast<const dict_t*>(p.dictionary);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int64_t t = blockIdx.x; t < p.rows; t += gridDim.x) {
    const int64_t program = t / p.rows_per_program;
    for (int64_t k = threadIdx.x; k < slots; k += kThreads) {
      const int64_t c = p.ids[program * slots + k];
      slot_concept[k] = (c < 0 || c >= p.concepts) ? -1 : c;  // out of range counts as empty
    }
    scalar_t* row = hidden + t * d;
    for (int64_t i = threadIdx.x; i < packs; i += kThreads) {
      const auto pack = cuda::load_pack<scalar_t, VEC>(row + i * VEC);
      float v[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] = static_cast<float>(pack.v[j]);
      store_row_pack<VEC>(x, packs, i, v);
    }
    __syncthreads();

    for (int64_t k = 0; k < slots; ++k) {
      const int64_t c = slot_concept[k];
      float dot = 0.f;
      if (c >= 0) {
        const dict_t* w = dictionary + c * d;
        for (int64_t i = threadIdx.x; i < packs; i += kThreads) {
          const auto pack = cuda::load_pack_cached<dict_t, VEC>(w + i * VEC);
          float v[VEC];
          load_row_pack<VEC>(x, packs, i, v);
#pragma unroll
          for (int j = 0; j < VEC; ++j) dot += v[j] * static_cast<float>(pack.v[j]);
        }
      }
      dot = cuda::warp_sum(dot);
      if (lane == 0) partial[warp * slots + k] = dot;
    }
    __syncthreads();

    for (int64_t k = threadIdx.x; k < slots; k += kThreads) {
      const int64_t c = slot_concept[k];
      float act = 0.f;
      if (c >= 0) {
        float dot = 0.f;
        for (int w = 0; w < kWarps; ++w) dot += partial[w * slots + k];
        act = cuda::relu(dot + (p.bias ? p.bias[c] : 0.f));
      }
      const float alpha = p.coeffs[program * slots + k];
      p.acts[t * slots + k] = act;
      coef[k] = c < 0 ? 0.f : (p.mode == Mode::kClamp ? alpha - act : alpha);
    }
    __syncthreads();

    if (p.mode != Mode::kDetect && (p.mask == nullptr || p.mask[t])) {
      for (int64_t i = threadIdx.x; i < packs; i += kThreads) {
        float delta[VEC] = {};
        for (int64_t k = 0; k < slots; ++k) {
          if (slot_concept[k] < 0) continue;
          const auto pack = cuda::load_pack_cached<dict_t, VEC>(dictionary + slot_concept[k] * d + i * VEC);
#pragma unroll
          for (int j = 0; j < VEC; ++j) delta[j] += coef[k] * static_cast<float>(pack.v[j]);
        }
        float v[VEC];
        load_row_pack<VEC>(x, packs, i, v);
        cuda::Pack<scalar_t, VEC> out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) out.v[j] = static_cast<scalar_t>(v[j] + delta[j]);
        cuda::store_pack<scalar_t, VEC>(row + i * VEC, out);
      }
    }
    __syncthreads();  // the next row reuses the shared buffers
  }
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <typename scalar_t, typename dict_t>
void launch(const SteerParams& params, int device) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vectorised = params.d % kVec == 0 && aligned(params.hidden, sizeof(cuda::Pack<scalar_t, kVec>)) &&
                          aligned(params.dictionary, sizeof(cuda::Pack<dict_t, kVec>));
  auto kernel = vectorised ? steer_kernel<scalar_t, dict_t, kVec> : steer_kernel<scalar_t, dict_t, 1>;
  const size_t smem = shared_bytes(params.slots, params.d);
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const int64_t grid = std::min<int64_t>(params.rows, int64_t{cuda::multiprocessor_count(device)} * kBlocksPerSm);
  kernel<<<static_cast<unsigned>(grid), kThreads, smem, c10::cuda::getCurrentCUDAStream(device)>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_for(const SteerProblem& p, const SteerParams& params, int device) {
  if (p.dictionary.scalar_type() == at::kFloat) {
    launch<scalar_t, float>(params, device);
  } else {
    launch<scalar_t, scalar_t>(params, device);
  }
}

at::Tensor steer_cuda(const at::Tensor& hidden, const at::Tensor& dictionary, const at::Tensor& concept_ids,
                      const at::Tensor& coeffs, c10::string_view mode, const std::optional<at::Tensor>& mask,
                      const std::optional<at::Tensor>& bias) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const SteerProblem p = make_steer_problem(hidden, dictionary, concept_ids, coeffs,
                                            std::string_view(mode.data(), mode.size()), mask, bias);
  if (p.rows == 0) return p.acts;
  const SteerParams params{p.hidden.data_ptr(),
                           p.dictionary.const_data_ptr(),
                           p.ids.const_data_ptr<int64_t>(),
                           p.coeffs.const_data_ptr<float>(),
                           p.mask.defined() ? p.mask.const_data_ptr<bool>() : nullptr,
                           p.bias.defined() ? p.bias.const_data_ptr<float>() : nullptr,
                           p.acts.data_ptr<float>(),
                           p.rows,
                           p.d,
                           p.slots,
                           p.concepts,
                           p.rows_per_program,
                           p.mode};
  const int device = hidden.get_device();
  switch (p.hidden.scalar_type()) {
    case at::kFloat: launch<float, float>(params, device); break;
    case at::kBFloat16: launch_for<c10::BFloat16>(p, params, device); break;
    default: launch_for<c10::Half>(p, params, device); break;
  }
  return p.acts;
}

}  // namespace

TORCH_LIBRARY_IMPL(steerkern, CUDA, m) { m.impl("steer_", &steer_cuda); }

}  // namespace steerkern
