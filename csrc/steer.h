// The fused steer/detect op: argument checks and problem description shared by the CPU and CUDA
// kernels. The math is DESIGN.md §1; steerkern/reference.py is the oracle.
#pragma once

#include <ATen/core/Tensor.h>

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
  Mode mode;
  int64_t rows, d, slots, concepts, rows_per_program;
};

// Checks the arguments of steerkern::steer_ and allocates the activations it returns.
SteerProblem make_steer_problem(const at::Tensor& hidden, const at::Tensor& dictionary,
                                const at::Tensor& concept_ids, const at::Tensor& coeffs,
                                std::string_view mode, const std::optional<at::Tensor>& mask,
                                const std::optional<at::Tensor>& bias);

// Instruction set the CPU kernel runs with: "avx512bf16", "avx512", "avx2", "avx" or "base".
const char* cpu_isa();

}  // namespace steerkern
