// Dense detection over all N concepts: the vendor GEMM (cuBLAS / CPU BLAS through ATen) computes
// h · W in chunks of rows, and a device epilogue applies bias, ReLU / JumpReLU, the mask and the
// optional per-sequence max in one pass over each chunk, so reduce="max" never holds (T, N).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace steerkern {

struct DetectProblem {
  at::Tensor bias;       // (N,) float32 or undefined
  at::Tensor threshold;  // (N,) float32 or undefined: JumpReLU (pre > threshold) * ReLU(pre)
  at::Tensor mask;       // (rows,) bool or undefined: rows kept
  int64_t rows, concepts, rows_per_sequence;
  bool reduce_max;
};

// Scores rows [first_row, first_row + pre.size(0)) from their float32 pre-activations pre (rows, N):
// writes them to out (rows, N), or folds them into the running per-sequence max out (B, N).
// pre may alias out's rows.
using DetectEpilogue = void (*)(const at::Tensor& pre, int64_t first_row, const DetectProblem& p, at::Tensor& out);

at::Tensor detect_dense(const at::Tensor& hidden, const at::Tensor& weight, bool weight_is_encoder,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& threshold,
                        const std::optional<at::Tensor>& mask, bool reduce_max, DetectEpilogue epilogue);

}  // namespace steerkern
