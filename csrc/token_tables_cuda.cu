// CUDA kernel of steerkern::fill_token_tables_: one thread per token of the step, on the current
// stream, nothing read back to the host.
#include "token_tables.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace steerkern {
namespace {

constexpr int kThreads = 128;

__global__ void fill_rows(const TokenTables tables) {
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (t < tables.tokens) tables.fill(t);
}

void fill_rows_cuda(const TokenTables& tables) {
  const auto blocks = static_cast<unsigned>((tables.tokens + kThreads - 1) / kThreads);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  fill_rows<<<blocks, kThreads, 0, stream>>>(tables);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fill_token_tables_cuda(at::Tensor& ids, at::Tensor& coeffs, at::Tensor& clamped, const at::Tensor& positions,
                            const std::optional<at::Tensor>& query_start_loc, const at::Tensor& request_ids,
                            const at::Tensor& request_coeffs, const at::Tensor& request_kind,
                            const at::Tensor& request_prefix, const at::Tensor& request_prompt,
                            const at::Tensor& request_clamped) {
  TORCH_CHECK_VALUE(ids.is_cuda(), "steerkern: the CUDA table kernel got the token ids on ", ids.device());
  const c10::cuda::CUDAGuard guard(ids.device());
  fill_token_tables(ids, coeffs, clamped, positions, query_start_loc, request_ids, request_coeffs, request_kind,
                    request_prefix, request_prompt, request_clamped, &fill_rows_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(steerkern, CUDA, m) { m.impl("fill_token_tables_", &fill_token_tables_cuda); }

}  // namespace steerkern
