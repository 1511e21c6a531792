// CPU epilogue of steerkern::detect: bias, ReLU / JumpReLU, mask and per-sequence max in one pass
// over each chunk of GEMM output.
#include "detect.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

namespace steerkern {
namespace {

// One concept's score from its pre-activation, with NaN propagating as in the reference.
inline float score(float pre, const float* bias, const float* threshold, int64_t n) {
  if (bias) pre += bias[n];
  const float relu = pre < 0.f ? 0.f : pre;
  if (threshold) return pre > threshold[n] ? relu : 0.f;
  return relu;
}

// max that keeps NaN, like torch.amax.
inline float max_nan(float a, float b) { return (b > a || b != b) ? b : a; }

void epilogue_cpu(const at::Tensor& pre_tensor, int64_t first_row, const DetectProblem& p, at::Tensor& out) {
  const float* pre = pre_tensor.const_data_ptr<float>();
  float* scores = out.data_ptr<float>();
  const float* bias = p.bias.defined() ? p.bias.const_data_ptr<float>() : nullptr;
  const float* threshold = p.threshold.defined() ? p.threshold.const_data_ptr<float>() : nullptr;
  const bool* mask = p.mask.defined() ? p.mask.const_data_ptr<bool>() : nullptr;
  const int64_t count = pre_tensor.size(0), n_concepts = p.concepts;

  if (!p.reduce_max) {
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const bool kept = !mask || mask[first_row + r];
        const float* in = pre + r * n_concepts;
        float* dst = scores + (first_row + r) * n_concepts;
        for (int64_t n = 0; n < n_concepts; ++n) {
          dst[n] = kept ? score(in[n], bias, threshold, n) : 0.f;
        }
      }
    });
    return;
  }
  // Threads own disjoint column ranges, so the running maxima need no synchronisation.
  at::parallel_for(0, n_concepts, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = 0; r < count; ++r) {
      const int64_t row = first_row + r;
      if (mask && !mask[row]) continue;
      const float* in = pre + r * n_concepts;
      float* best = scores + (row / p.rows_per_sequence) * n_concepts;
      for (int64_t n = begin; n < end; ++n) {
        best[n] = max_nan(best[n], score(in[n], bias, threshold, n));
      }
    }
  });
}

at::Tensor detect_cpu(const at::Tensor& hidden, const at::Tensor& weight, bool weight_is_encoder,
                      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& threshold,
                      const std::optional<at::Tensor>& mask, bool reduce_max) {
  return detect_dense(hidden, weight, weight_is_encoder, bias, threshold, mask, reduce_max, &epilogue_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(steerkern, CPU, m) { m.impl("detect", &detect_cpu); }

}  // namespace steerkern
