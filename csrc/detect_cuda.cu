// CUDA epilogue of steerkern::detect: bias, ReLU / JumpReLU, mask and per-sequence max in one pass
// over each chunk of cuBLAS output. The max runs over groups of rows per thread and merges with
// integer atomicMax, which orders non-negative floats (and NaN, kept canonical) correctly.
#include "cuda_utils.cuh"
#include "detect.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace steerkern {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerGroup = 32;

struct EpilogueParams {
  const float* bias;
  const float* threshold;
  const bool* mask;
  float* out;
  int64_t first_row, count, concepts, rows_per_sequence;
};

__device__ __forceinline__ float score(float pre, const EpilogueParams& p, int64_t n) {
  if (p.bias) pre += p.bias[n];
  const float relu = cuda::relu(pre);
  if (p.threshold) return pre > p.threshold[n] ? relu : 0.f;
  return relu;
}

__device__ __forceinline__ float max_nan(float a, float b) { return (b > a || b != b) ? b : a; }

__global__ void score_rows(const float* __restrict__ pre, EpilogueParams p) {
  const int64_t total = p.count * p.concepts;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total; e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = e / p.concepts, n = e % p.concepts, row = p.first_row + r;
    const bool kept = p.mask == nullptr || p.mask[row];
    p.out[row * p.concepts + n] = kept ? score(pre[e], p, n) : 0.f;
  }
}

__device__ __forceinline__ void merge_max(float* slot, float best) {
  if (!(best > 0.f) && best == best) return;  // 0 (or -0) cannot raise a max that starts at 0
  const int bits = best != best ? 0x7FC00000 : __float_as_int(best);
  atomicMax(reinterpret_cast<int*>(slot), bits);
}

__global__ void max_rows(const float* __restrict__ pre, EpilogueParams p) {
  const int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (n >= p.concepts) return;
  const int64_t begin = int64_t{blockIdx.y} * kRowsPerGroup;
  const int64_t end = begin + kRowsPerGroup < p.count ? begin + kRowsPerGroup : p.count;
  int64_t sequence = (p.first_row + begin) / p.rows_per_sequence;
  float best = 0.f;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t row = p.first_row + r;
    if (row / p.rows_per_sequence != sequence) {
      merge_max(p.out + sequence * p.concepts + n, best);
      sequence = row / p.rows_per_sequence;
      best = 0.f;
    }
    if (p.mask && !p.mask[row]) continue;
    best = max_nan(best, score(pre[r * p.concepts + n], p, n));
  }
  merge_max(p.out + sequence * p.concepts + n, best);
}

void launch(const at::Tensor& pre, const EpilogueParams& params, bool reduce_max, cudaStream_t stream) {
  const float* data = pre.const_data_ptr<float>();
  if (reduce_max) {
    const dim3 grid((params.concepts + kThreads - 1) / kThreads, (params.count + kRowsPerGroup - 1) / kRowsPerGroup);
    max_rows<<<grid, kThreads, 0, stream>>>(data, params);
  } else {
    const int64_t blocks = std::min<int64_t>((params.count * params.concepts + kThreads - 1) / kThreads, 65535);
    score_rows<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(data, params);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void epilogue_cuda(const at::Tensor& pre, int64_t first_row, const DetectProblem& p, at::Tensor& out) {
  const EpilogueParams params{p.bias.defined() ? p.bias.const_data_ptr<float>() : nullptr,
                              p.threshold.defined() ? p.threshold.const_data_ptr<float>() : nullptr,
                              p.mask.defined() ? p.mask.const_data_ptr<bool>() : nullptr,
                              out.data_ptr<float>(),
                              first_row,
                              pre.size(0),
                              p.concepts,
                              p.rows_per_sequence};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(pre.get_device());
  launch(pre, params, p.reduce_max, stream);
}

at::Tensor detect_cuda(const at::Tensor& hidden, const at::Tensor& weight, bool weight_is_encoder,
                       const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& threshold,
                       const std::optional<at::Tensor>& mask, bool reduce_max) {
  // The device checks come before the guard: with hidden on the CPU and another argument on CUDA
  // (which routes the call here) they name the mismatch, where the guard would only say that
  // hidden is not a CUDA device.
  auto check_device = [&](const at::Tensor& tensor, const char* name) {
    TORCH_CHECK_VALUE(tensor.device() == hidden.device(), "steerkern: ", name, " is on ", tensor.device(),
                      " but hidden is on ", hidden.device());
  };
  check_device(weight, "the detection weight");
  if (bias.has_value()) check_device(*bias, "bias");
  if (threshold.has_value()) check_device(*threshold, "threshold");
  if (mask.has_value()) check_device(*mask, "mask");
  TORCH_CHECK(hidden.is_cuda(), "steerkern: the CUDA detect kernel got hidden on ", hidden.device());
  const c10::cuda::CUDAGuard guard(hidden.device());
  return detect_dense(hidden, weight, weight_is_encoder, bias, threshold, mask, reduce_max, &epilogue_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(steerkern, CUDA, m) { m.impl("detect", &detect_cuda); }

}  // namespace steerkern
