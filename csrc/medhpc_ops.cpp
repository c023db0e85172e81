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
  // divided by K when kl_mean. Rows b and b' share noise iff b / share_rows == b' / share_rows:
  // eps[s, b, j] is stream number (s * G + b / share_rows) * K + j, G = ceil(B / share_rows).
  m.def("vib_reparam(Tensor mu, Tensor a, int samples, int seed, int offset, bool relu, "
        "bool kl_mean, int share_rows=1) -> (Tensor z, Tensor kl)");
  // Gradients of vib_reparam with respect to mu and a; regenerates eps from (seed, offset).
  m.def("_vib_reparam_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor a, int seed, "
        "int offset, bool relu, bool kl_mean, int share_rows=1) -> (Tensor grad_mu, "
        "Tensor grad_a)");
  // Test-only, CPU: the CUDA kernels' per-thread bodies run serially (z, the gradients and the
  // stream position behind each z and grad_z element), to check the CUDA schedule without a GPU.
  m.def("_vib_reparam_cuda_schedule(Tensor mu, Tensor a, Tensor grad_z, Tensor grad_kl, "
        "int seed, int offset, bool relu, bool kl_mean, int share_rows) -> (Tensor z, "
        "Tensor grad_mu, Tensor grad_a, Tensor position_fwd, Tensor position_bwd)");
  // Test-only, CPU: words x0, x1 of Philox blocks first .. first+count-1 as the vectorised CPU
  // kernels draw them (columns 0, 1) and as common/philox.h does (2, 3): (count, 4) int64.
  m.def("_vib_philox_words(int first, int count, int seed, int offset) -> Tensor");
  // SPSA finite differences (Uesato et al. 2018) over a batch of images x (B, ...): directions
  // first .. first+count-1, each a Rademacher vector v[b, k] from Philox (seed, offset), never
  // stored. out[b, 2i] = clip(x[b] + delta v[b, first+i]), out[b, 2i+1] = clip(x[b] - delta v).
  m.def("spsa_perturb(Tensor x, int first, int count, float delta, int seed, int offset, "
        "float clip_min, float clip_max) -> Tensor");
  // The same, written into a caller's buffer `out` (B, 2*count, ...): the model's input buffer,
  // reused across iterations, so no probe batch is allocated (and page-faulted) per step.
  m.def("spsa_perturb_out(Tensor x, int first, int count, float delta, int seed, int offset, "
        "float clip_min, float clip_max, Tensor(a!) out) -> ()");
  // The gradient estimate of those directions from the losses (B, 2*count) of spsa_perturb's
  // output: sum_i (L[b, 2i] - L[b, 2i+1]) / (2 delta total) * v[b, first+i], shaped (B, *image_shape).
  m.def("spsa_reduce(Tensor losses, int[] image_shape, int first, float delta, int seed, "
        "int offset, int total) -> Tensor");
  // Test only (CPU): spsa_reduce computed by running the CUDA kernel's block, thread and
  // shared-memory schedule serially on the host (csrc/common/spsa_reduce_schedule.h).
  m.def("_spsa_reduce_schedule(Tensor losses, int[] image_shape, int first, float delta, "
        "int seed, int offset, int total) -> Tensor");
}
