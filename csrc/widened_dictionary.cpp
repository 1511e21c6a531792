#include "widened_dictionary.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace steerkern {

namespace {

// A copy pays for itself when each copied row replaces at least this many widenings of it
// (one per row of hidden and slot that reads it), and is kept small enough to stay in cache.
constexpr int64_t kMinReadsPerRow = 8;
constexpr int64_t kMaxCopyBytes = 8 << 20;

}  // namespace

void use_widened_rows(SteerProblem& p) {
  if (p.dictionary.scalar_type() == at::kFloat || p.slots == 0 || p.rows == 0) return;
  const int64_t* ids = p.ids.const_data_ptr<int64_t>();
  const int64_t slots_used = p.ids.numel();
  const int64_t max_rows = std::min(p.rows * p.slots / kMinReadsPerRow, kMaxCopyBytes / (4 * p.d));
  if (max_rows < 1) return;
  // Position of each used concept in the copy, -1 for the others: kept between calls, reset
  // entry by entry after use, so a call costs its ids and not the dictionary's size.
  thread_local std::vector<int64_t> position;
  if (static_cast<int64_t>(position.size()) < p.concepts) position.resize(p.concepts, -1);
  std::vector<int64_t> used;
  for (int64_t i = 0; i < slots_used && static_cast<int64_t>(used.size()) <= max_rows; ++i) {
    const int64_t id = ids[i];
    if (id >= 0 && id < p.concepts && position[id] < 0) {
      position[id] = static_cast<int64_t>(used.size());
      used.push_back(id);
    }
  }
  const bool worth_it = !used.empty() && static_cast<int64_t>(used.size()) <= max_rows;
  if (worth_it) {
    at::Tensor renumbered = at::empty_like(p.ids);
    int64_t* out = renumbered.data_ptr<int64_t>();
    for (int64_t i = 0; i < slots_used; ++i) {
      out[i] = ids[i] >= 0 && ids[i] < p.concepts ? position[ids[i]] : -1;  // out of range stays empty
    }
    const at::Tensor chosen = at::tensor(used, p.ids.options());
    p.dictionary = p.dictionary.index_select(0, chosen).to(at::kFloat);
    if (p.bias.defined()) p.bias = p.bias.index_select(0, chosen);
    p.ids = renumbered;
    p.concepts = static_cast<int64_t>(used.size());
  }
  for (const int64_t id : used) position[id] = -1;
}

}  // namespace steerkern
