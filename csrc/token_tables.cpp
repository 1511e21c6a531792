// steerkern::fill_token_tables_: argument checks shared by both kernels, and the CPU kernel.
#include "token_tables.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

namespace steerkern {
namespace {

void check_table(const at::Tensor& table, at::ScalarType dtype, at::IntArrayRef shape, const at::Tensor& ids,
                 const char* name) {
  TORCH_CHECK_VALUE(table.scalar_type() == dtype, "steerkern: ", name, " must be ", dtype, ", got ",
                    table.scalar_type());
  TORCH_CHECK_VALUE(table.sizes() == shape, "steerkern: ", name, " must have shape ", shape, ", got ", table.sizes());
  TORCH_CHECK_VALUE(table.is_contiguous(), "steerkern: ", name, " must be contiguous");
  TORCH_CHECK_VALUE(table.device() == ids.device(), "steerkern: ", name, " is on ", table.device(),
                    " but the token ids are on ", ids.device());
}

}  // namespace

void fill_token_tables(at::Tensor& ids, at::Tensor& coeffs, at::Tensor& clamped, const at::Tensor& positions,
                       const std::optional<at::Tensor>& query_start_loc, const at::Tensor& request_ids,
                       const at::Tensor& request_coeffs, const at::Tensor& request_kind,
                       const at::Tensor& request_prefix, const at::Tensor& request_prompt,
                       const at::Tensor& request_clamped, TokenTablesKernel kernel) {
  TORCH_CHECK_VALUE(ids.dim() == 3, "steerkern: the token ids must be (groups, max_tokens, slots), got ", ids.sizes());
  TORCH_CHECK_VALUE(request_ids.dim() == 3 && request_ids.size(0) == ids.size(0) && request_ids.size(2) == ids.size(2),
                    "steerkern: the request ids must be (groups, max_requests, slots) with the token ids' groups "
                    "and slots ", ids.sizes(), ", got ", request_ids.sizes());
  const int64_t groups = ids.size(0), max_tokens = ids.size(1), slots = ids.size(2);
  const int64_t max_requests = request_ids.size(1);
  TORCH_CHECK_VALUE(max_requests > 0, "steerkern: the request tables hold no request");
  check_table(ids, at::kLong, ids.sizes(), ids, "the token ids");
  check_table(coeffs, at::kFloat, ids.sizes(), ids, "the token coeffs");
  check_table(clamped, at::kBool, {max_tokens}, ids, "the token clamped flags");
  check_table(request_ids, at::kLong, request_ids.sizes(), ids, "the request ids");
  check_table(request_coeffs, at::kFloat, request_ids.sizes(), ids, "the request coeffs");
  check_table(request_kind, at::kInt, {max_requests}, ids, "the request kinds");
  check_table(request_prefix, at::kLong, {max_requests}, ids, "the request prefix lengths");
  check_table(request_prompt, at::kLong, {max_requests}, ids, "the request prompt lengths");
  check_table(request_clamped, at::kBool, {max_requests}, ids, "the request clamped flags");
  TORCH_CHECK_VALUE(positions.dim() == 1 && positions.size(0) <= max_tokens,
                    "steerkern: positions must be (tokens,) with at most ", max_tokens, " tokens, got ",
                    positions.sizes());
  const int64_t tokens = positions.size(0);
  check_table(positions, at::kLong, {tokens}, ids, "positions");
  if (!query_start_loc.has_value()) {
    ids.narrow(1, 0, tokens).fill_(-1);
    coeffs.narrow(1, 0, tokens).zero_();
    clamped.narrow(0, 0, tokens).fill_(false);
    return;
  }
  const at::Tensor& starts = *query_start_loc;
  TORCH_CHECK_VALUE(starts.dim() == 1 && starts.size(0) > 0,
                    "steerkern: query_start_loc must be (requests + 1,), got ", starts.sizes());
  TORCH_CHECK_VALUE(starts.scalar_type() == at::kInt || starts.scalar_type() == at::kLong,
                    "steerkern: query_start_loc must be int32 or int64, got ", starts.scalar_type());
  check_table(starts, starts.scalar_type(), starts.sizes(), ids, "query_start_loc");
  if (tokens == 0) return;
  const bool int32_starts = starts.scalar_type() == at::kInt;
  const TokenTables tables{ids.data_ptr<int64_t>(),
                           coeffs.data_ptr<float>(),
                           clamped.data_ptr<bool>(),
                           positions.const_data_ptr<int64_t>(),
                           int32_starts ? starts.const_data_ptr<int32_t>() : nullptr,
                           int32_starts ? nullptr : starts.const_data_ptr<int64_t>(),
                           request_ids.const_data_ptr<int64_t>(),
                           request_coeffs.const_data_ptr<float>(),
                           request_kind.const_data_ptr<int32_t>(),
                           request_prefix.const_data_ptr<int64_t>(),
                           request_prompt.const_data_ptr<int64_t>(),
                           request_clamped.const_data_ptr<bool>(),
                           tokens,
                           starts.size(0) - 1,
                           max_requests,
                           max_tokens,
                           groups,
                           slots};
  kernel(tables);
}

namespace {

// A step holds at most max_num_batched_tokens tokens of a few dozen bytes each: one thread.
void fill_rows_cpu(const TokenTables& tables) {
  for (int64_t t = 0; t < tables.tokens; ++t) tables.fill(t);
}

void fill_token_tables_cpu(at::Tensor& ids, at::Tensor& coeffs, at::Tensor& clamped, const at::Tensor& positions,
                           const std::optional<at::Tensor>& query_start_loc, const at::Tensor& request_ids,
                           const at::Tensor& request_coeffs, const at::Tensor& request_kind,
                           const at::Tensor& request_prefix, const at::Tensor& request_prompt,
                           const at::Tensor& request_clamped) {
  fill_token_tables(ids, coeffs, clamped, positions, query_start_loc, request_ids, request_coeffs, request_kind,
                    request_prefix, request_prompt, request_clamped, &fill_rows_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(steerkern, CPU, m) { m.impl("fill_token_tables_", &fill_token_tables_cpu); }

}  // namespace steerkern
