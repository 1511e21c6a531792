// The serving plugin's per-token program tables (steerkern/vllm/tables.py), filled once per step
// from its per-request tables in one kernel: each token's request, whether that request's program
// applies at the token's position, and the program's slots for every dictionary. The math is
// steerkern/reference.py's token_tables.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <optional>

namespace steerkern {

// The positions a program steers (steerkern/reference.py's POSITION_KINDS).
enum PositionKind : int32_t { kUnsteered = 0, kAllPositions = 1, kPromptPositions = 2, kGenerationPositions = 3 };

struct TokenTables {
  int64_t* ids;                  // (groups, max_tokens, slots): the step's first `tokens` rows are written
  float* coeffs;                 // (groups, max_tokens, slots)
  bool* clamped;                 // (max_tokens,)
  const int64_t* positions;      // (tokens,) of each token in its sequence
  const int32_t* starts32;       // query_start_loc (requests + 1,) when int32,
  const int64_t* starts64;       // or when int64
  const int64_t* request_ids;    // (groups, max_requests, slots)
  const float* request_coeffs;   // (groups, max_requests, slots)
  const int32_t* request_kind;   // (max_requests,) PositionKind
  const int64_t* request_prefix;  // (max_requests,) positions below it are not steered
  const int64_t* request_prompt;  // (max_requests,) prompt length
  const bool* request_clamped;   // (max_requests,)
  int64_t tokens, requests, max_requests, max_tokens, groups, slots;

  C10_HOST_DEVICE int64_t start(int64_t request) const {
    return starts32 != nullptr ? int64_t{starts32[request]} : starts64[request];
  }

  // Token t's rows of every table.
  C10_HOST_DEVICE void fill(int64_t t) const {
    // Its request: how many requests start at or before it (searchsorted(starts[1:], t, right=True)).
    int64_t low = 0, high = requests;
    while (low < high) {
      const int64_t middle = (low + high) / 2;
      if (start(middle + 1) <= t) {
        low = middle + 1;
      } else {
        high = middle;
      }
    }
    const int64_t request = low < max_requests - 1 ? low : max_requests - 1;
    const int64_t position = positions[t];
    const int32_t kind = request_kind[request];
    const bool in_prompt = position < request_prompt[request];
    // Rows past the last request's tokens are padding.
    const bool steered = t < start(requests) && position >= request_prefix[request] &&
                         (kind == kAllPositions || (kind == kPromptPositions && in_prompt) ||
                          (kind == kGenerationPositions && !in_prompt));
    clamped[t] = request_clamped[request];
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t from = (g * max_requests + request) * slots, to = (g * max_tokens + t) * slots;
      for (int64_t k = 0; k < slots; ++k) {
        ids[to + k] = steered ? request_ids[from + k] : -1;
        coeffs[to + k] = request_coeffs[from + k];
      }
    }
  }
};

using TokenTablesKernel = void (*)(const TokenTables&);

// Checks the arguments of steerkern::fill_token_tables_ (nothing is written on error), then fills
// the first positions.size(0) rows: with `kernel`, or, for a dummy run (no query_start_loc),
// with empty slots, zero coefficients and no clamping.
void fill_token_tables(at::Tensor& ids, at::Tensor& coeffs, at::Tensor& clamped, const at::Tensor& positions,
                       const std::optional<at::Tensor>& query_start_loc, const at::Tensor& request_ids,
                       const at::Tensor& request_coeffs, const at::Tensor& request_kind,
                       const at::Tensor& request_prefix, const at::Tensor& request_prompt,
                       const at::Tensor& request_clamped, TokenTablesKernel kernel);

}  // namespace steerkern
