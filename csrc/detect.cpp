#include "detect.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace steerkern {
namespace {

// Bytes of GEMM output and converted input held at once: large enough to keep the GEMM
// efficient, small enough that reduce="max" over long inputs never materialises the (T, N) scores.
constexpr int64_t kChunkBytes = int64_t{256} << 20;
// Keeps the epilogue's launch grid within CUDA's limits when N is small.
constexpr int64_t kMaxChunkRows = int64_t{1} << 20;

// aten::mm.dtype_out (half-precision inputs, float32 output, on tensor cores) where this torch
// has it for the device; looked up at run time so the build works on every torch from 2.6 up.
std::optional<c10::OperatorHandle> mm_with_float_output(const at::Tensor& hidden) {
  if (!hidden.is_cuda() || hidden.scalar_type() == at::kFloat) return std::nullopt;
  static const auto handle = c10::Dispatcher::singleton().findSchema({"aten::mm", "dtype_out"});
  if (!handle.has_value() || !handle->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) return std::nullopt;
  return handle;
}

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
  TORCH_CHECK_VALUE(hidden.size(-1) > 0, "steerkern: hidden has d = 0; rows need at least one feature");
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
  p.rows = hidden.numel() / d;
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

  // The pre-activations are float32 whatever the inputs: a half-precision GEMM output would round
  // them before the bias and the JumpReLU threshold, and flip decisions near a threshold.
  const auto mm_dtype = rhs.scalar_type() == dtype ? mm_with_float_output(hidden) : std::nullopt;
  const auto gemm_dtype = mm_dtype.has_value() ? dtype : at::kFloat;
  const at::Tensor gemm_rhs = rhs.to(gemm_dtype);
  const at::Tensor rows = hidden.reshape({p.rows, d});
  at::Tensor out_rows = reduce_max ? out : out.view({p.rows, p.concepts});
  const int64_t converted_row_bytes = dtype == gemm_dtype ? 0 : d * at::elementSize(gemm_dtype);
  const int64_t row_bytes = p.concepts * int64_t{sizeof(float)} + converted_row_bytes;
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / row_bytes, 1, kMaxChunkRows);
  for (int64_t first = 0; first < p.rows; first += chunk) {
    const int64_t count = std::min(chunk, p.rows - first);
    const at::Tensor lhs = rows.narrow(0, first, count).to(gemm_dtype);
    // Without a max to take, the GEMM writes the output rows and the epilogue finishes them.
    at::Tensor pre = reduce_max ? at::empty({count, p.concepts}, scores) : out_rows.narrow(0, first, count);
    if (mm_dtype.has_value()) {
      mm_dtype->typed<at::Tensor&(const at::Tensor&, const at::Tensor&, at::ScalarType, at::Tensor&)>().call(
          lhs, gemm_rhs, at::kFloat, pre);
    } else {
      at::mm_out(pre, lhs, gemm_rhs);
    }
    epilogue(pre, first, p, out_rows);
  }
  return out;
}

}  // namespace steerkern
