// The fused steer/detect op: argument checks and problem description shared by the CPU and CUDA
// kernels. The math is DESIGN.md §1; steerkern/reference.py is the oracle.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <optional>
#include <string_view>

namespace steerkern {

enum class Mode { kAdd, kClamp, kDetect };

Mode parse_mode(std::string_view mode);

// Everything a kernel needs, with ids/coeffs/mask/bias already checked and laid out densely.
// Row t uses program t / rows_per_program: rows_per_program is S for per-sequence programs
// (B, K) and 1 for per-row programs (T, K).
struct SteerProblem {
  at::Tensor hidden;      // (rows, d) view of the caller's tensor, written in place
  at::Tensor dictionary;  // (concepts, d), hidden's dtype or float32
  at::Tensor ids;         // (programs, slots) int64
  at::Tensor coeffs;      // (programs, slots) float32
  at::Tensor mask;        // (rows,) bool, or undefined: steer every row
  at::Tensor bias;        // (concepts,) float32, or undefined
  at::Tensor acts;        // (rows, slots) float32 output
  at::Tensor gate_bounds; // (programs, slots, 2) float32 (above, below), NaN for steering slots; or undefined
  at::Tensor gate_all;    // (programs,) bool: all gate slots must pass (else one); or undefined
  at::Tensor residual;    // (rows, d), hidden's dtype: the activations are read on round(hidden + residual)
                          // and the update goes to hidden alone; or undefined
  at::Tensor clamped;     // (programs,) bool, mode clamp: the programs that clamp (the others add); or undefined
  Mode mode;
  int64_t rows, d, slots, concepts, rows_per_program;
};

// Checks the arguments of steerkern::steer_ and allocates the activations it returns.
SteerProblem make_steer_problem(const at::Tensor& hidden, const at::Tensor& dictionary,
                                const at::Tensor& concept_ids, const at::Tensor& coeffs,
                                std::string_view mode, const std::optional<at::Tensor>& mask,
                                const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& gate_bounds = std::nullopt,
                                const std::optional<at::Tensor>& gate_all = std::nullopt,
                                const std::optional<at::Tensor>& residual = std::nullopt,
                                const std::optional<at::Tensor>& clamped = std::nullopt);

// Whether the gate slots of a row with activations acts[slots] let it be steered: a slot is a gate
// when it holds a concept and its bounds are not NaN, and it passes when above < act < below.
C10_HOST_DEVICE inline bool gate_passes(const float* bounds, const float* acts, const int64_t* ids, int64_t concepts,
                                        int64_t slots, bool all) {
  bool any_gate = false, any_pass = false, every_pass = true;
  for (int64_t k = 0; k < slots; ++k) {
    const float above = bounds[2 * k], below = bounds[2 * k + 1];
    if (above != above || ids[k] < 0 || ids[k] >= concepts) continue;  // a steering slot, or empty
    const bool pass = acts[k] > above && acts[k] < below;
    any_gate = true, any_pass |= pass, every_pass &= pass;
  }
  return !any_gate || (all ? every_pass : any_pass);
}

// Instruction set the CPU kernel runs with: "avx512bf16", "avx512", "avx2", "avx" or "base".
const char* cpu_isa();

}  // namespace steerkern
