// Row primitives of the CPU kernels: float32 accumulation over one hidden row of length n.
// Each is compiled for AVX-512, AVX2+FMA+F16C and baseline x86-64 and picked at load time
// (cpu_vector.cpp), so one build runs everywhere and uses the widest vectors present.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace steerkern::cpu {

void load_row(float* x, const float* src, int64_t n);
void load_row(float* x, const c10::BFloat16* src, int64_t n);
void load_row(float* x, const c10::Half* src, int64_t n);

// dst = round(x + delta): the sum is formed in float32 and rounded once to dst's type.
void store_row(float* dst, const float* x, const float* delta, int64_t n);
void store_row(c10::BFloat16* dst, const float* x, const float* delta, int64_t n);
void store_row(c10::Half* dst, const float* x, const float* delta, int64_t n);

float dot(const float* x, const float* w, int64_t n);
float dot(const float* x, const c10::BFloat16* w, int64_t n);
float dot(const float* x, const c10::Half* w, int64_t n);

// y += a * w
void axpy(float* y, float a, const float* w, int64_t n);
void axpy(float* y, float a, const c10::BFloat16* w, int64_t n);
void axpy(float* y, float a, const c10::Half* w, int64_t n);

}  // namespace steerkern::cpu
