#include "detect.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace steerkern {
namespace {

// Bytes of GEMM output held at once: large enough to keep the GEMM efficient, small enough that
// reduce="max" over long inputs never materialises the full (T, N) scores.
constexpr int64_t kChunkBytes = int64_t{256} << 20;
// Keeps the epilogue's launch grid within CUDA's limits when N is small.
constexpr int64_t kMaxChunkRows = int64_t{1} << 20;

at::Tensor optional_float(const std::optional<at::Tensor>& tensor, int64_t concepts, const char* name,
                          const at::Tensor& hidden) {
  if (!tensor.has_value()) return {};
  TORCH_CHECK_VALUE(tensor->dim() == 1 && tensor->size(0) == concepts, "steerkern: ", name, " must be (N,)");
  TORCH_CHECK_VALUE(tensor->device() == hidden.device(), "steerkern: ", name, " must be on hidden's device");
  return tensor->to(at::kFloat).contiguous();
}

}  // namespace

at::Tensor detect_dense(const at::Tensor& hidden, const at::Tensor& weight, bool weight_is_encoder,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& threshold,
                        const std::optional<at::Tensor>& mask, bool reduce_max, DetectEpilogue epilogue) {
  const auto dtype = hidden.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                    "steerkern: hidden must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK_VALUE(hidden.dim() == 2 || hidden.dim() == 3, "steerkern: hidden must be (B, S, d) or (T, d)");
  TORCH_CHECK_VALUE(weight.dim() == 2, "steerkern: the detection weight must be 2-D");
  TORCH_CHECK_VALUE(weight.device() == hidden.device(), "steerkern: the detection weight must be on hidden's device");
  TORCH_CHECK_VALUE(weight.scalar_type() == dtype || weight.scalar_type() == at::kFloat,
                    "steerkern: the detection weight must have hidden's dtype or float32");
  // The GEMM's right operand is (d, N): the encoder as stored, or the dictionary rows transposed.
  const at::Tensor rhs = weight_is_encoder ? weight : weight.t();
  const int64_t d = hidden.size(-1);
  TORCH_CHECK_VALUE(rhs.size(0) == d, "steerkern: the detection weight's d differs from hidden's");

  DetectProblem p;
  p.concepts = rhs.size(1);
  p.rows = hidden.numel() / std::max<int64_t>(d, 1);
  p.rows_per_sequence = hidden.dim() == 3 ? hidden.size(1) : p.rows;
  p.reduce_max = reduce_max;
  p.bias = optional_float(bias, p.concepts, "bias", hidden);
  p.threshold = optional_float(threshold, p.concepts, "threshold", hidden);
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool && mask->numel() == p.rows,
                      "steerkern: mask must be bool with one flag per row of hidden");
    TORCH_CHECK_VALUE(mask->device() == hidden.device(), "steerkern: mask must be on hidden's device");
    p.mask = mask->contiguous();
  }

  const auto scores = hidden.options().dtype(at::kFloat);
  at::Tensor out;
  if (!reduce_max) {
    std::vector<int64_t> shape(hidden.sizes().begin(), hidden.sizes().end() - 1);
    shape.push_back(p.concepts);
    out = at::empty(shape, scores);
  } else if (hidden.dim() == 3) {
    out = at::zeros({hidden.size(0), p.concepts}, scores);  // scores are >= 0: max over no row is 0
  } else {
    out = at::zeros({p.concepts}, scores);
  }
  if (p.rows == 0 || p.concepts == 0) return out;

  const auto gemm_dtype = rhs.scalar_type();
  const at::Tensor rows = hidden.reshape({p.rows, d});
  at::Tensor out_rows = reduce_max ? out : out.view({p.rows, p.concepts});
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / (p.concepts * rhs.element_size()), 1, kMaxChunkRows);
  for (int64_t first = 0; first < p.rows; first += chunk) {
    const int64_t count = std::min(chunk, p.rows - first);
    const at::Tensor lhs = rows.narrow(0, first, count).to(gemm_dtype);
    at::Tensor pre;
    if (!reduce_max && gemm_dtype == at::kFloat) {
      pre = out_rows.narrow(0, first, count);  // the GEMM writes the output rows, the epilogue finishes them
      at::mm_out(pre, lhs, rhs);
    } else {
      pre = at::mm(lhs, rhs);
    }
    epilogue(pre, first, p, out_rows);
  }
  return out;
}

}  // namespace steerkern
