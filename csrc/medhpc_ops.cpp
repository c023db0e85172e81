// The one TORCH_LIBRARY block of the build: op schemas only. Backends attach their kernels
// with TORCH_LIBRARY_IMPL in cpu/ and cuda/; fake kernels and autograd are registered from
// Python (medhpc/ops). A second TORCH_LIBRARY(medhpc, ...) anywhere aborts Python at import.
#include <Python.h>
#include <torch/library.h>

// `import medhpc._C` only has to load this library so the static registrations run; the
// module itself carries no Python functions (everything is reached through torch.ops.medhpc).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(medhpc, m) {
  // z[s, b, j] = mu[b, j] + softplus(r[b, j] - 5) * eps[s, b, j], r = relu(a) or a, with eps
  // standard normal from Philox (seed, offset); kl[b] = sum_j KL(N(mu, sigma^2) || N(0, 1)),
  // divided by K when kl_mean.
  m.def("vib_reparam(Tensor mu, Tensor a, int samples, int seed, int offset, bool relu, "
        "bool kl_mean) -> (Tensor z, Tensor kl)");
  // Gradients of vib_reparam with respect to mu and a; regenerates eps from (seed, offset).
  m.def("_vib_reparam_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor a, int seed, "
        "int offset, bool relu, bool kl_mean) -> (Tensor grad_mu, Tensor grad_a)");
}
