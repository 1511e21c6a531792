// CUDA kernel of steerkern::steer_ (the math is DESIGN.md §1; steerkern/reference.py is the oracle).
//
// A block owns one row of hidden at a time (grid-stride over rows, as many blocks as the GPU holds
// at once) and its threads keep the row in registers from the read to the write:
//
//   read   The row is cut at hidden's 16-byte boundaries into a scalar head, a body of 16-byte
//          packs and a scalar tail (head and tail shorter than a pack, so a misaligned row or a d
//          that is not a multiple of the pack loses only those elements to scalar loads). Thread
//          `tid` holds body packs tid, tid + blockDim, ... (at most PACKS of them) as float32,
//          and at most one head or tail element.
//   dots   Slots are taken kTile at a time: every thread accumulates the tile's kTile partial dots
//          independently over its packs, then one block reduction gives the tile's activations
//          (written for every row, masked or not) and, in clamp, the coefficients α − a.
//   write  h + Σ_k coef_k W[c_k] in float32, rounded once to hidden's dtype, 16-byte stores. In
//          mode add with K <= kTile the coefficients are known before the dots, so the update is
//          accumulated from the same dictionary loads as the dots; otherwise a second pass over
//          the slots' dictionary rows (in L1/L2 by then) accumulates it. With a residual the
//          registers hold the stream round(h + r), and the write reads h again.
//
// Dictionary rows are read through the read-only cache, with 16-byte loads where the slot's row
// is 16-byte aligned at the start of hidden's body (always when d is a multiple of the pack and
// both tensors are 16-byte aligned) and element by element otherwise, since a hidden row and a
// dictionary row can be misaligned differently. Empty slots (id -1, or out of range) are skipped.
//
// Sizes: PACKS is 1, 2, 4 (8 for float32 rows), the fewest that fit the row in 128 threads, else
// the most with up to 512 threads: d up to 16384. Rows longer than that are refused, as is a K
// whose slots (12 bytes each in shared memory) pass the device's opt-in limit. With its registers
// busy holding rows, a block asks L2 for its rows ahead (kPrefetchRows) without holding registers.
#include "cuda_utils.cuh"
#include "steer.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Export.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>

// at::cuda::getDeviceProperties (cached per device), declared as in ATen/cuda/CUDAContextLight.h
// without that header, which pulls in cuSPARSE and cuBLAS headers a CUDA toolkit may not carry.
namespace at::cuda {
TORCH_CUDA_CPP_API cudaDeviceProp* getDeviceProperties(c10::DeviceIndex device);
}  // namespace at::cuda

namespace steerkern {
namespace {

constexpr int kTile = 8;            // slots per block reduction
constexpr int kMinThreads = 32;     // at least the 2 x 7 head and tail elements of a half row
constexpr int kRowThreads = 128;    // blocks grow wider than this only when the packs cannot
constexpr int kMaxThreads = 512;    // __launch_bounds__: up to 128 registers a thread
constexpr int kMaxRowFloats = 32;   // row elements a thread keeps in registers
constexpr int kPrefetchRows = 2;    // rows of its own a block asks L2 for ahead of the one it steers

struct SteerParams {
  void* hidden;
  const void* dictionary;
  const int64_t* ids;
  const float* coeffs;
  const bool* mask;
  const float* bias;
  float* acts;
  const float* gate_bounds;  // (programs, slots, 2) or null: see steer.h
  const bool* gate_all;
  const void* residual;  // (rows, d) or null: the dots read the stream round(hidden + residual)
  const bool* clamped;   // (programs,) or null: in mode clamp, the programs that clamp
  int64_t rows, d, slots, concepts, rows_per_program;
  Mode mode;
};

// Shared memory of a block: the row's slots (concept or -1, coefficient), then the per-warp
// partial dots of one tile, then the row's gate decision.
size_t shared_bytes(int64_t slots, int threads) {
  return static_cast<size_t>(slots) * (sizeof(int64_t) + sizeof(float)) + (threads / 32) * kTile * sizeof(float) +
         sizeof(int);
}

// This thread's part of one row: its body packs and its head or tail element, as float32.
template <typename scalar_t, int PACKS>
struct ThreadRow {
  static constexpr int kVec = cuda::Chunk<scalar_t>::kCount;

  float x[PACKS][kVec];
  float x_edge = 0.f;
  int head;        // elements before the first 16-byte boundary of the row
  int packs;       // 16-byte packs of the body, starting at element head
  int first;       // this thread's first pack; its pack i is first + i * stride
  int stride;
  int edge = -1;   // this thread's head or tail element, -1 if none

  __device__ __forceinline__ ThreadRow(const scalar_t* row, int d, int tid, int threads) {
    const int misaligned = static_cast<int>(reinterpret_cast<uintptr_t>(row) % 16 / sizeof(scalar_t));
    head = min(misaligned == 0 ? 0 : kVec - misaligned, d);
    packs = (d - head) / kVec;
    first = tid;
    stride = threads;
    const int tail = head + packs * kVec;
    // The last threads, which hold the fewest packs, take the head and tail elements.
    const int e = threads - 1 - tid;
    if (e < head) edge = e;
    else if (e < head + (d - tail)) edge = tail + (e - head);
  }

  __device__ __forceinline__ bool holds(int i) const { return first + i * stride < packs; }
  __device__ __forceinline__ int offset(int i) const { return head + (first + i * stride) * kVec; }

  __device__ __forceinline__ void read(const scalar_t* row) {
#pragma unroll
    for (int i = 0; i < PACKS; ++i) {
      if (holds(i)) {
        cuda::load_streaming(row + offset(i), x[i]);
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) x[i][j] = 0.f;
      }
    }
    if (edge >= 0) x_edge = static_cast<float>(row[edge]);
  }

  // x becomes the residual stream round(x + residual) at the row, in the row's dtype. The residual
  // row is read in packs where it is aligned as the row is, element by element otherwise.
  __device__ __forceinline__ void add_residual(const scalar_t* residual) {
    const bool vectorised = cuda::aligned16(residual + head);
#pragma unroll
    for (int i = 0; i < PACKS; ++i) {
      if (!holds(i)) continue;
      float r[kVec];
      if (vectorised) {
        cuda::load_streaming(residual + offset(i), r);
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) r[j] = static_cast<float>(residual[offset(i) + j]);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) x[i][j] = static_cast<float>(static_cast<scalar_t>(x[i][j] + r[j]));
    }
    if (edge >= 0) x_edge = static_cast<float>(static_cast<scalar_t>(x_edge + static_cast<float>(residual[edge])));
  }
};

// Pack i of a slot's dictionary row w (which starts at hidden's head) as float32.
template <typename dict_t, int N>
__device__ __forceinline__ void load_dictionary(const dict_t* w, bool vectorised, float (&out)[N]) {
  if (vectorised) {
    cuda::load_readonly<dict_t, N>(w, out);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = cuda::load_readonly(w + j);
  }
}

// The dots of slots [first_slot, first_slot + count) with this thread's part of the row, added
// to dot[]. With kUpdate (mode add, all slots in this tile) the update Σ α_k W[c_k] too, and the
// steered packs are written as soon as they are complete.
template <bool kUpdate, typename scalar_t, typename dict_t, int PACKS>
__device__ __forceinline__ void tile_dots(const ThreadRow<scalar_t, PACKS>& r, const dict_t* dictionary, int64_t d,
                                          const int64_t* slot_concept, const float* slot_coef, int first_slot,
                                          int count, float (&dot)[kTile], scalar_t* row) {
  constexpr int kVec = ThreadRow<scalar_t, PACKS>::kVec;
#pragma unroll
  for (int i = 0; i < PACKS; ++i) {
    if (!r.holds(i)) continue;
    float delta[kVec] = {};
#pragma unroll
    for (int k = 0; k < kTile; ++k) {
      if (k >= count) break;
      const int64_t c = slot_concept[first_slot + k];
      if (c < 0) continue;
      const dict_t* w = dictionary + c * d + r.head;
      float v[kVec];
      load_dictionary(w + (r.offset(i) - r.head), cuda::aligned16(w), v);
#pragma unroll
      for (int j = 0; j < kVec; ++j) dot[k] = fmaf(r.x[i][j], v[j], dot[k]);
      if constexpr (kUpdate) {
        const float coef = slot_coef[first_slot + k];
#pragma unroll
        for (int j = 0; j < kVec; ++j) delta[j] = fmaf(coef, v[j], delta[j]);
      }
    }
    if constexpr (kUpdate) {
      float out[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) out[j] = __fadd_rn(r.x[i][j], delta[j]);  // never contracted into an FMA
      cuda::store_streaming(row + r.offset(i), out);
    }
  }
  if (r.edge >= 0) {
    float delta = 0.f;
#pragma unroll
    for (int k = 0; k < kTile; ++k) {
      if (k >= count) break;
      const int64_t c = slot_concept[first_slot + k];
      if (c < 0) continue;
      const float v = cuda::load_readonly(dictionary + c * d + r.edge);
      dot[k] = fmaf(r.x_edge, v, dot[k]);
      if constexpr (kUpdate) delta = fmaf(slot_coef[first_slot + k], v, delta);
    }
    if constexpr (kUpdate) row[r.edge] = static_cast<scalar_t>(__fadd_rn(r.x_edge, delta));
  }
}

// h + Σ_k coef_k W[c_k] over all slots, written to row: the pass after the dots (clamp, or add
// with more slots than one tile). With reread (r holds the stream, not the row) h is read again.
template <typename scalar_t, typename dict_t, int PACKS>
__device__ __forceinline__ void update_row(const ThreadRow<scalar_t, PACKS>& r, const dict_t* dictionary, int64_t d,
                                           const int64_t* slot_concept, const float* slot_coef, int slots,
                                           scalar_t* row, bool reread) {
  constexpr int kVec = ThreadRow<scalar_t, PACKS>::kVec;
#pragma unroll
  for (int i = 0; i < PACKS; ++i) {
    if (!r.holds(i)) continue;
    float h[kVec];  // asked for before the slots' loads, which hide its latency
    if (reread) {
      cuda::load_streaming(row + r.offset(i), h);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) h[j] = r.x[i][j];
    }
    float delta[kVec] = {};
#pragma unroll 4
    for (int k = 0; k < slots; ++k) {
      const int64_t c = slot_concept[k];
      if (c < 0) continue;
      const dict_t* w = dictionary + c * d + r.head;
      float v[kVec];
      load_dictionary(w + (r.offset(i) - r.head), cuda::aligned16(w), v);
      const float coef = slot_coef[k];
#pragma unroll
      for (int j = 0; j < kVec; ++j) delta[j] = fmaf(coef, v[j], delta[j]);
    }
    float out[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] = __fadd_rn(h[j], delta[j]);
    cuda::store_streaming(row + r.offset(i), out);
  }
  if (r.edge >= 0) {
    float delta = 0.f;
    for (int k = 0; k < slots; ++k) {
      const int64_t c = slot_concept[k];
      if (c >= 0) delta = fmaf(slot_coef[k], cuda::load_readonly(dictionary + c * d + r.edge), delta);
    }
    const float h = reread ? static_cast<float>(row[r.edge]) : r.x_edge;
    row[r.edge] = static_cast<scalar_t>(__fadd_rn(h, delta));
  }
}

__device__ __forceinline__ bool is_gate(const SteerParams& p, int64_t program, int k) {
  return p.gate_bounds != nullptr && !isnan(p.gate_bounds[(program * p.slots + k) * 2]);
}

template <typename scalar_t, typename dict_t, int PACKS>
__global__ void __launch_bounds__(kMaxThreads, 1) steer_kernel(const SteerParams p) {
  extern __shared__ __align__(16) unsigned char shared[];
  auto* slot_concept = reinterpret_cast<int64_t*>(shared);              // [slots], -1 = empty
  float* slot_coef = reinterpret_cast<float*>(slot_concept + p.slots);  // [slots]: α, then the coefficient
  float* partial = slot_coef + p.slots;                                 // [warps][kTile]
  int* gate_open = reinterpret_cast<int*>(partial + (blockDim.x / 32) * kTile);

  auto* hidden = static_cast<scalar_t*>(p.hidden);
  const auto* __restrict__ dictionary = static_cast<const dict_t*>(p.dictionary);
  const int tid = threadIdx.x, threads = blockDim.x, warp = tid / 32, lane = tid % 32, warps = threads / 32;
  const int slots = static_cast<int>(p.slots);

  for (int64_t t = blockIdx.x; t < p.rows; t += gridDim.x) {
    scalar_t* row = hidden + t * p.d;
    ThreadRow<scalar_t, PACKS> r(row, static_cast<int>(p.d), tid, threads);
    r.read(row);
    const auto* residual = static_cast<const scalar_t*>(p.residual);
    if (residual != nullptr) r.add_residual(residual + t * p.d);
    // The block's rows two ahead (and at its first row the next one too) go to L2 while this one
    // is steered: memory requests in flight that hold no registers.
    for (int ahead = t == blockIdx.x ? 1 : kPrefetchRows; ahead <= kPrefetchRows; ++ahead) {
      if (t + int64_t{ahead} * gridDim.x >= p.rows) break;
      const scalar_t* next = row + int64_t{ahead} * gridDim.x * p.d;
#pragma unroll
      for (int i = 0; i < PACKS; ++i) {
        const int64_t element = int64_t{tid + i * threads} * r.kVec;
        if (element < p.d) cuda::prefetch_l2(next + element);
      }
    }

    const int64_t program = t / p.rows_per_program;
    for (int k = tid; k < slots; k += threads) {
      const int64_t c = p.ids[program * p.slots + k];
      const bool filled = c >= 0 && c < p.concepts;  // out of range counts as empty
      slot_concept[k] = filled ? c : -1;
      slot_coef[k] = filled && !is_gate(p, program, k) ? p.coeffs[program * p.slots + k] : 0.f;  // gates do not steer
    }
    bool steered = p.mode != Mode::kDetect && (p.mask == nullptr || p.mask[t]);
    // A gated row is written only once its gate slots' activations are known: never in the dots.
    const bool gated = steered && p.gate_bounds != nullptr;
    const bool fused = steered && !gated && p.mode == Mode::kAdd && slots <= kTile && residual == nullptr;
    const bool clamps = p.mode == Mode::kClamp && (p.clamped == nullptr || p.clamped[program]);
    __syncthreads();

    for (int first_slot = 0; first_slot < slots; first_slot += kTile) {
      const int count = min(kTile, slots - first_slot);
      float dot[kTile] = {};
      if (fused) {
        tile_dots<true>(r, dictionary, p.d, slot_concept, slot_coef, first_slot, count, dot, row);
      } else {
        tile_dots<false>(r, dictionary, p.d, slot_concept, slot_coef, first_slot, count, dot, row);
      }
#pragma unroll
      for (int k = 0; k < kTile; ++k) {
        if (k >= count) break;
        const float sum = cuda::warp_sum(dot[k]);
        if (lane == 0) partial[warp * kTile + k] = sum;
      }
      __syncthreads();
      if (tid < count) {
        const int k = first_slot + tid;
        const int64_t c = slot_concept[k];
        float sum = 0.f;
        for (int w = 0; w < warps; ++w) sum += partial[w * kTile + tid];
        const float act = c < 0 ? 0.f : cuda::relu(sum + (p.bias != nullptr ? p.bias[c] : 0.f));
        p.acts[t * p.slots + k] = act;
        if (clamps && c >= 0 && !is_gate(p, program, k)) slot_coef[k] -= act;
      }
      __syncthreads();  // partial is reused by the next tile; the update reads slot_coef
    }

    if (gated) {  // the tiles' acts are in memory and visible to the block since their last barrier
      if (tid == 0) {
        *gate_open = gate_passes(p.gate_bounds + program * p.slots * 2, p.acts + t * p.slots, p.ids + program * p.slots,
                                 p.concepts, p.slots, p.gate_all != nullptr && p.gate_all[program]);
      }
      __syncthreads();
      steered = *gate_open != 0;
    }
    if (steered && !fused) update_row(r, dictionary, p.d, slot_concept, slot_coef, slots, row, residual != nullptr);
    __syncthreads();  // the next row stages its own slots
  }
}

// Packs per thread and threads per block for rows of d elements, `vec` to a pack. Registers not
// holding the row (indices, accumulators, loads in flight) cost about the same per thread whatever
// PACKS is, so a block holds its row in the fewest threads: the fewest packs per thread that fit
// the row in kRowThreads threads, or the most packs per thread and as many threads as needed.
struct LaunchShape {
  int packs, threads;
};

LaunchShape launch_shape(int64_t d, int vec) {
  const int64_t body = d / vec;  // the most packs a row's body can have
  auto threads_for = [&](int packs) { return std::max<int64_t>(kMinThreads, ((body + packs - 1) / packs + 31) / 32 * 32); };
  const int max_packs = kMaxRowFloats / vec;
  int packs = 1;
  while (packs < max_packs && threads_for(packs) > kRowThreads) packs *= 2;
  const int64_t threads = threads_for(packs);
  TORCH_CHECK(threads <= kMaxThreads, "steerkern: the CUDA steer kernel keeps a row in registers, which takes d up to ",
              int64_t{kMaxThreads} * kMaxRowFloats, " elements; got d = ", d);
  return {packs, static_cast<int>(threads)};
}

template <typename scalar_t, typename dict_t, int PACKS>
void launch_kernel(const SteerParams& params, int threads, int device) {
  const auto kernel = steer_kernel<scalar_t, dict_t, PACKS>;
  const size_t smem = shared_bytes(params.slots, threads);
  const cudaDeviceProp* props = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device));
  TORCH_CHECK(smem <= props->sharedMemPerBlockOptin, "steerkern: K = ", params.slots, " slots at d = ", params.d,
              " need ", smem, " bytes of shared memory per block, more than the ", props->sharedMemPerBlockOptin,
              " this GPU allows; use fewer slots per call");
  if (smem > props->sharedMemPerBlock) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  int resident = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, smem));
  const int64_t grid = std::min<int64_t>(params.rows, int64_t{props->multiProcessorCount} * std::max(resident, 1));
  kernel<<<static_cast<unsigned>(grid), threads, smem, c10::cuda::getCurrentCUDAStream(device)>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename dict_t>
void launch(const SteerParams& params, int device) {
  constexpr int kVec = cuda::Chunk<scalar_t>::kCount;
  const LaunchShape shape = launch_shape(params.d, kVec);
  switch (shape.packs) {
    case 1: return launch_kernel<scalar_t, dict_t, 1>(params, shape.threads, device);
    case 2: return launch_kernel<scalar_t, dict_t, 2>(params, shape.threads, device);
    case 4: return launch_kernel<scalar_t, dict_t, 4>(params, shape.threads, device);
    default:
      if constexpr (kMaxRowFloats / kVec >= 8) return launch_kernel<scalar_t, dict_t, 8>(params, shape.threads, device);
  }
  TORCH_CHECK(false, "steerkern: no CUDA steer kernel for ", shape.packs, " packs per thread");
}

template <typename scalar_t>
void launch_for(const SteerProblem& p, const SteerParams& params, int device) {
  if (p.dictionary.scalar_type() == at::kFloat) {
    launch<scalar_t, float>(params, device);
  } else {
    launch<scalar_t, scalar_t>(params, device);
  }
}

at::Tensor steer_cuda(const at::Tensor& hidden, const at::Tensor& dictionary, const at::Tensor& concept_ids,
                      const at::Tensor& coeffs, c10::string_view mode, const std::optional<at::Tensor>& mask,
                      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gate_bounds,
                      const std::optional<at::Tensor>& gate_all, const std::optional<at::Tensor>& residual,
                      const std::optional<at::Tensor>& clamped) {
  // The checks come first: with hidden on the CPU and another argument on CUDA (which routes the
  // call here) they name the mismatch, where a device guard would only say "not a CUDA device".
  const SteerProblem p = make_steer_problem(hidden, dictionary, concept_ids, coeffs,
                                            std::string_view(mode.data(), mode.size()), mask, bias, gate_bounds,
                                            gate_all, residual, clamped);
  TORCH_CHECK(hidden.is_cuda(), "steerkern: the CUDA steer kernel got hidden on ", hidden.device());
  const c10::cuda::CUDAGuard guard(hidden.device());
  if (p.rows == 0) return p.acts;
  const SteerParams params{p.hidden.data_ptr(),
                           p.dictionary.const_data_ptr(),
                           p.ids.const_data_ptr<int64_t>(),
                           p.coeffs.const_data_ptr<float>(),
                           p.mask.defined() ? p.mask.const_data_ptr<bool>() : nullptr,
                           p.bias.defined() ? p.bias.const_data_ptr<float>() : nullptr,
                           p.acts.data_ptr<float>(),
                           p.gate_bounds.defined() ? p.gate_bounds.const_data_ptr<float>() : nullptr,
                           p.gate_all.defined() ? p.gate_all.const_data_ptr<bool>() : nullptr,
                           p.residual.defined() ? p.residual.const_data_ptr() : nullptr,
                           p.clamped.defined() ? p.clamped.const_data_ptr<bool>() : nullptr,
                           p.rows,
                           p.d,
                           p.slots,
                           p.concepts,
                           p.rows_per_program,
                           p.mode};
  const int device = hidden.get_device();
  switch (p.hidden.scalar_type()) {
    case at::kFloat: launch<float, float>(params, device); break;
    case at::kBFloat16: launch_for<c10::BFloat16>(p, params, device); break;
    default: launch_for<c10::Half>(p, params, device); break;
  }
  return p.acts;
}

}  // namespace

TORCH_LIBRARY_IMPL(steerkern, CUDA, m) { m.impl("steer_", &steer_cuda); }

}  // namespace steerkern
