// The rows of a half-precision dictionary that a CPU call uses, widened to float32 once.
#pragma once

#include "steer.h"

namespace steerkern {

// When few distinct dictionary rows serve many rows of hidden (a batch drawing on a pool of
// concepts), points p at a float32 copy of just those rows, with its ids and bias renumbered to
// match; otherwise leaves p as it is. The kernels' float32-dictionary path widens nothing, and
// where it runs the same loop as the half-precision one (no native steps) it computes the same
// values bit for bit: widening is exact.
void use_widened_rows(SteerProblem& p);

}  // namespace steerkern
