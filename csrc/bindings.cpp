// The op schemas, defined once, and the Python module whose import registers them.
// Kernels register per dispatch key next to their code (steer_cpu.cpp, steer_cuda.cu, ...).
#include "steer.h"

#include <Python.h>
#include <torch/library.h>

// setup.py passes the build facts as bare tokens (a shell sits between it and the compiler).
#define STEERKERN_STRINGIFY_(...) #__VA_ARGS__
#define STEERKERN_STRINGIFY(...) STEERKERN_STRINGIFY_(__VA_ARGS__)
#ifndef STEERKERN_CUDA_ARCHS
#define STEERKERN_CUDA_ARCHS
#endif
#ifndef STEERKERN_CUDA_VERSION
#define STEERKERN_CUDA_VERSION
#endif

TORCH_LIBRARY(steerkern, m) {
  // In place on hidden; returns the pre-steering activations (..., K) in float32. gate_bounds
  // (..., K, 2) = (above, below) makes a filled slot a gate (NaN: a steering slot): a row is steered
  // only where one of its gate slots passes (all of them with gate_all), or where it has none.
  // With residual (hidden's shape) the activations are those of the stream round(hidden + residual)
  // and the update goes to hidden alone; in mode clamp, clamped (one flag per program) picks the
  // programs that clamp, the others add.
  m.def(
      "steer_(Tensor(a!) hidden, Tensor dictionary, Tensor concept_ids, Tensor coeffs, str steer_mode, "
      "Tensor? mask, Tensor? bias, Tensor? gate_bounds=None, Tensor? gate_all=None, Tensor? residual=None, "
      "Tensor? clamped=None) -> Tensor");
  // Dense scores (..., N), or their max over each sequence's kept rows when reduce_max.
  m.def(
      "detect(Tensor hidden, Tensor weight, bool weight_is_encoder, Tensor? bias, Tensor? threshold, "
      "Tensor? mask, bool reduce_max) -> Tensor");
  // The serving plugin's per-token tables (groups, max_tokens, slots) for a step's first
  // positions.size(0) tokens, from its per-request tables (csrc/token_tables.h); no
  // query_start_loc (a dummy run): nothing steered.
  m.def(
      "fill_token_tables_(Tensor(a!) ids, Tensor(b!) coeffs, Tensor(c!) clamped, Tensor positions, "
      "Tensor? query_start_loc, Tensor request_ids, Tensor request_coeffs, Tensor request_kind, "
      "Tensor request_prefix, Tensor request_prompt, Tensor request_clamped) -> ()");
}

static PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(steerkern::cpu_isa()); }

extern "C" PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set the CPU kernels run with."},
      {nullptr, nullptr, 0, nullptr}};
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "steerkern's compiled ops", -1, methods};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef STEERKERN_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(m, "WITH_CUDA", with_cuda) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_ARCHS", STEERKERN_STRINGIFY(STEERKERN_CUDA_ARCHS)) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_VERSION", STEERKERN_STRINGIFY(STEERKERN_CUDA_VERSION)) < 0 ||
      PyModule_AddStringConstant(m, "TORCH_VERSION", STEERKERN_STRINGIFY(STEERKERN_TORCH_VERSION)) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
