#include "steer.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

namespace steerkern {

Mode parse_mode(std::string_view mode) {
  if (mode == "add") return Mode::kAdd;
  if (mode == "clamp") return Mode::kClamp;
  if (mode == "detect") return Mode::kDetect;
  TORCH_CHECK_VALUE(false, "steerkern: mode must be add, clamp or detect, got '", mode, "'");
}

namespace {

// Shape of the activations steer_ returns: hidden's rows, then the program's slots.
std::vector<int64_t> acts_shape(const at::Tensor& hidden, const at::Tensor& concept_ids) {
  std::vector<int64_t> shape(hidden.sizes().begin(), hidden.sizes().end() - 1);
  shape.push_back(concept_ids.size(-1));
  return shape;
}

void check_same_device(const at::Tensor& tensor, const at::Tensor& hidden, const char* name) {
  TORCH_CHECK_VALUE(tensor.device() == hidden.device(), "steerkern: ", name, " is on ", tensor.device(),
                    " but hidden is on ", hidden.device());
}

}  // namespace

SteerProblem make_steer_problem(const at::Tensor& hidden, const at::Tensor& dictionary,
                                const at::Tensor& concept_ids, const at::Tensor& coeffs,
                                std::string_view mode, const std::optional<at::Tensor>& mask,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gate_bounds,
                                const std::optional<at::Tensor>& gate_all, const std::optional<at::Tensor>& residual,
                                const std::optional<at::Tensor>& clamped) {
  const auto dtype = hidden.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                    "steerkern: hidden must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK_VALUE(hidden.dim() == 2 || hidden.dim() == 3, "steerkern: hidden must be (B, S, d) or (T, d)");
  TORCH_CHECK_VALUE(hidden.size(-1) > 0, "steerkern: hidden has d = 0; rows need at least one feature");
  TORCH_CHECK_VALUE(hidden.is_contiguous(), "steerkern: hidden must be contiguous (steer_ writes it in place)");
  TORCH_CHECK_VALUE(dictionary.dim() == 2 && dictionary.size(1) == hidden.size(-1),
                    "steerkern: dictionary must be (N, d) with d = hidden.size(-1)");
  TORCH_CHECK_VALUE(dictionary.scalar_type() == dtype || dictionary.scalar_type() == at::kFloat,
                    "steerkern: dictionary must have hidden's dtype or float32");
  TORCH_CHECK_VALUE(concept_ids.scalar_type() == at::kLong && coeffs.scalar_type() == at::kFloat,
                    "steerkern: concept_ids must be int64 and coeffs float32");
  TORCH_CHECK_VALUE(concept_ids.sizes() == coeffs.sizes() && concept_ids.dim() >= 2,
                    "steerkern: concept_ids and coeffs must share a (..., K) shape");
  check_same_device(dictionary, hidden, "dictionary");
  check_same_device(concept_ids, hidden, "concept_ids");
  check_same_device(coeffs, hidden, "coeffs");

  SteerProblem p;
  p.mode = parse_mode(mode);
  p.d = hidden.size(-1);
  p.rows = hidden.numel() / p.d;
  p.slots = concept_ids.size(-1);
  p.concepts = dictionary.size(0);
  const int64_t programs = concept_ids.numel() / std::max<int64_t>(p.slots, 1);
  const bool per_sequence = hidden.dim() == 3 && concept_ids.dim() == 2 && programs == hidden.size(0);
  TORCH_CHECK_VALUE(per_sequence || programs == p.rows,
                    "steerkern: concept_ids must hold one program per sequence (B, K) or per row (..., K)");
  p.rows_per_program = per_sequence ? hidden.size(1) : 1;

  p.hidden = hidden.view({p.rows, p.d});
  p.dictionary = dictionary.contiguous();
  p.ids = concept_ids.contiguous();
  p.coeffs = coeffs.contiguous();
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool && mask->numel() == p.rows,
                      "steerkern: mask must be bool with one flag per row of hidden");
    check_same_device(*mask, hidden, "mask");
    p.mask = mask->contiguous();
  }
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == p.concepts, "steerkern: bias must be (N,)");
    check_same_device(*bias, hidden, "bias");
    p.bias = bias->to(at::kFloat).contiguous();
  }
  if (gate_bounds.has_value()) {
    std::vector<int64_t> shape(concept_ids.sizes().begin(), concept_ids.sizes().end());
    shape.push_back(2);
    TORCH_CHECK_VALUE(gate_bounds->scalar_type() == at::kFloat && gate_bounds->sizes() == at::IntArrayRef(shape),
                      "steerkern: gate_bounds must be float32 (..., K, 2), one (above, below) per slot");
    check_same_device(*gate_bounds, hidden, "gate_bounds");
    p.gate_bounds = gate_bounds->contiguous();
  }
  if (gate_all.has_value()) {
    TORCH_CHECK_VALUE(p.gate_bounds.defined(), "steerkern: gate_all needs gate_bounds");
    TORCH_CHECK_VALUE(gate_all->scalar_type() == at::kBool && gate_all->numel() == programs,
                      "steerkern: gate_all must be bool with one flag per program");
    check_same_device(*gate_all, hidden, "gate_all");
    p.gate_all = gate_all->contiguous();
  }
  if (residual.has_value()) {
    TORCH_CHECK_VALUE(residual->scalar_type() == dtype && residual->sizes() == hidden.sizes(),
                      "steerkern: residual must have hidden's dtype and shape");
    TORCH_CHECK_VALUE(residual->is_contiguous(), "steerkern: residual must be contiguous");
    check_same_device(*residual, hidden, "residual");
    // The kernels read the residual's rows while they write hidden's.
    TORCH_CHECK_VALUE(at::get_overlap_status(*residual, hidden) == at::MemOverlapStatus::No,
                      "steerkern: residual shares memory with hidden, which steer_ writes while it reads the "
                      "residual; pass a separate tensor");
    p.residual = residual->view({p.rows, p.d});
  }
  if (clamped.has_value()) {
    TORCH_CHECK_VALUE(p.mode == Mode::kClamp, "steerkern: clamped picks the clamping programs of mode clamp");
    TORCH_CHECK_VALUE(clamped->scalar_type() == at::kBool && clamped->numel() == programs,
                      "steerkern: clamped must be bool with one flag per program");
    check_same_device(*clamped, hidden, "clamped");
    p.clamped = clamped->contiguous();
  }
  p.acts = at::empty(acts_shape(hidden, concept_ids), hidden.options().dtype(at::kFloat));
  return p;
}

}  // namespace steerkern
