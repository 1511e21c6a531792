// CPU kernel of steerkern::steer_: one pass over each row of hidden (read once, written once),
// rows split across threads. The row is widened to float32 once; detection dots and the update
// run on that copy while it sits in L1.
#include "cpu_vector.h"
#include "steer.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace steerkern {
namespace {

// ReLU that keeps NaN, as torch.relu does.
inline float relu(float v) { return v < 0.f ? 0.f : v; }

template <typename scalar_t, typename dict_t>
void steer_rows(const SteerProblem& p, int64_t begin, int64_t end) {
  const int64_t d = p.d, slots = p.slots;
  auto* hidden = static_cast<scalar_t*>(p.hidden.data_ptr());
  const auto* dictionary = static_cast<const dict_t*>(p.dictionary.const_data_ptr());
  const auto* ids = p.ids.const_data_ptr<int64_t>();
  const auto* coeffs = p.coeffs.const_data_ptr<float>();
  const bool* mask = p.mask.defined() ? p.mask.const_data_ptr<bool>() : nullptr;
  const float* bias = p.bias.defined() ? p.bias.const_data_ptr<float>() : nullptr;
  float* acts = p.acts.data_ptr<float>();

  std::vector<float> x(d), delta(d), coef(slots);
  std::vector<const dict_t*> rows(slots);
  // In add mode the update depends only on the program, so rows sharing one reuse its delta.
  int64_t delta_program = -1;

  for (int64_t t = begin; t < end; ++t) {
    const int64_t program = t / p.rows_per_program;
    cpu::load_row(x.data(), hidden + t * d, d);
    for (int64_t k = 0; k < slots; ++k) {
      const int64_t concept_id = ids[program * slots + k];
      if (concept_id < 0 || concept_id >= p.concepts) {  // empty slot
        rows[k] = nullptr;
        coef[k] = 0.f;
        acts[t * slots + k] = 0.f;
        continue;
      }
      rows[k] = dictionary + concept_id * d;
      const float act = relu(cpu::dot(x.data(), rows[k], d) + (bias ? bias[concept_id] : 0.f));
      const float alpha = coeffs[program * slots + k];
      acts[t * slots + k] = act;
      coef[k] = p.mode == Mode::kClamp ? alpha - act : alpha;
    }
    if (p.mode == Mode::kDetect || (mask && !mask[t])) continue;
    if (p.mode == Mode::kClamp || program != delta_program) {
      std::fill(delta.begin(), delta.end(), 0.f);
      for (int64_t k = 0; k < slots; ++k) {
        if (rows[k]) cpu::axpy(delta.data(), coef[k], rows[k], d);
      }
      delta_program = p.mode == Mode::kAdd ? program : -1;
    }
    cpu::store_row(hidden + t * d, x.data(), delta.data(), d);
  }
}

template <typename scalar_t>
void steer_rows_for(const SteerProblem& p, int64_t begin, int64_t end) {
  if (p.dictionary.scalar_type() == at::kFloat) {
    steer_rows<scalar_t, float>(p, begin, end);
  } else {
    steer_rows<scalar_t, scalar_t>(p, begin, end);
  }
}

at::Tensor steer_cpu(const at::Tensor& hidden, const at::Tensor& dictionary, const at::Tensor& concept_ids,
                     const at::Tensor& coeffs, c10::string_view mode, const std::optional<at::Tensor>& mask,
                     const std::optional<at::Tensor>& bias) {
  const SteerProblem p = make_steer_problem(hidden, dictionary, concept_ids, coeffs,
                                            std::string_view(mode.data(), mode.size()), mask, bias);
  // Enough rows per task that threading pays for itself on short inputs.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(p.d, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    switch (p.hidden.scalar_type()) {
      case at::kFloat: return steer_rows<float, float>(p, begin, end);
      case at::kBFloat16: return steer_rows_for<c10::BFloat16>(p, begin, end);
      default: return steer_rows_for<c10::Half>(p, begin, end);
    }
  });
  return p.acts;
}

}  // namespace

TORCH_LIBRARY_IMPL(steerkern, CPU, m) { m.impl("steer_", &steer_cpu); }

}  // namespace steerkern
