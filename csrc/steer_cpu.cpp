// CPU kernel of steerkern::steer_: one pass over each row of hidden (read once, written once),
// rows split across threads and taken in blocks (steer_cpu_rows.inc says why). float32 rows are
// read and updated where they lie; bfloat16 rows with a bfloat16 dictionary too, with AVX512-BF16
// instructions where the CPU has them; other half-precision rows are widened to float32 a chunk at
// a time. The body (steer_cpu_rows.inc) is compiled for AVX-512 with and without BF16, AVX2, AVX
// (with FMA and F16C) and baseline x86-64; the widest the CPU runs is picked at load. Below AVX-512,
// a half-precision dictionary whose rows a call reads many times is read through a float32 copy
// of those rows (widened_dictionary.h).
#include "steer.h"
#include "widened_dictionary.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace steerkern {

// A target pragma does not define the instruction sets' macros (__AVX__ and the like), so each copy
// is told what it may use: STEERKERN_VECTOR_BITS (128 if unset), STEERKERN_AVX512 and
// STEERKERN_NATIVE_BF16.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STEERKERN_VECTOR_BITS 512
#pragma GCC push_options
#pragma GCC target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define STEERKERN_AVX512
#define STEERKERN_NATIVE_BF16
namespace isa_avx512bf16 {
#include "steer_cpu_rows.inc"
}
#undef STEERKERN_NATIVE_BF16
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace isa_avx512 {
#include "steer_cpu_rows.inc"
}
#undef STEERKERN_AVX512
#pragma GCC pop_options

#undef STEERKERN_VECTOR_BITS
#define STEERKERN_VECTOR_BITS 256
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace isa_avx2 {
#include "steer_cpu_rows.inc"
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx,fma,f16c")
namespace isa_avx {
#include "steer_cpu_rows.inc"
}
#pragma GCC pop_options
#undef STEERKERN_VECTOR_BITS
#define STEERKERN_X86_DISPATCH
#endif

namespace isa_base {
#include "steer_cpu_rows.inc"
}

namespace {

using RowsKernel = void (*)(const SteerProblem&, int64_t, int64_t);

struct CpuKernel {
  const char* isa;
  RowsKernel rows;
  // Whether every half-precision dictionary read goes through the widening loop (no native steps),
  // which a float32 copy of the rows then computes bit for bit (see use_widened_rows).
  bool widening_reads;
};

// The widest instruction set this CPU runs; STEERKERN_CPU_ISA=base|avx|avx2|avx512 caps it (for
// tests and comparisons).
CpuKernel pick_cpu_kernel() {
  const char* cap = std::getenv("STEERKERN_CPU_ISA");
  const std::string_view limit = cap ? cap : "";
#ifdef STEERKERN_X86_DISPATCH
  __builtin_cpu_init();
  const bool fma_f16c = __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx = fma_f16c && __builtin_cpu_supports("avx") && limit != "base";
  const bool avx2 = avx && __builtin_cpu_supports("avx2") && limit != "avx";
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && limit != "avx2";
  const bool avx512bf16 = avx512 && __builtin_cpu_supports("avx512bf16") && limit != "avx512";
  if (avx512bf16) return {"avx512bf16", &isa_avx512bf16::steer_rows_any, false};
  if (avx512) return {"avx512", &isa_avx512::steer_rows_any, false};
  if (avx2) return {"avx2", &isa_avx2::steer_rows_any, true};
  if (avx) return {"avx", &isa_avx::steer_rows_any, true};
#endif
  return {"base", &isa_base::steer_rows_any, true};
}

const CpuKernel& cpu_kernel() {
  static const CpuKernel kernel = pick_cpu_kernel();
  return kernel;
}

at::Tensor steer_cpu(const at::Tensor& hidden, const at::Tensor& dictionary, const at::Tensor& concept_ids,
                     const at::Tensor& coeffs, c10::string_view mode, const std::optional<at::Tensor>& mask,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gate_bounds,
                     const std::optional<at::Tensor>& gate_all, const std::optional<at::Tensor>& residual,
                     const std::optional<at::Tensor>& clamped) {
  const CpuKernel& kernel = cpu_kernel();
  SteerProblem p = make_steer_problem(hidden, dictionary, concept_ids, coeffs,
                                            std::string_view(mode.data(), mode.size()), mask, bias, gate_bounds,
                                            gate_all, residual, clamped);
  if (kernel.widening_reads) use_widened_rows(p);
  // Enough rows per task that threading pays for itself on short inputs.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(p.d, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) { kernel.rows(p, begin, end); });
  return p.acts;
}

}  // namespace

const char* cpu_isa() { return cpu_kernel().isa; }

TORCH_LIBRARY_IMPL(steerkern, CPU, m) { m.impl("steer_", &steer_cpu); }

}  // namespace steerkern
