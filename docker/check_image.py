#!/usr/bin/env python3
"""Check that an image (or any install) runs medhpc as the cluster jobs need it.

Run at the end of the Docker build, by the Apptainer image's ``%test``, and by hand on a GPU
node to check a container command before a sweep uses it::

    srun --gpus-per-node=1 apptainer exec --nv medhpc.sif python /opt/medhpc/docker/check_image.py --gpu

Checks: the compiled extension ``medhpc._C`` loads and registers a CPU and a CUDA kernel for
every op; torch is a CUDA build. With ``--gpu``: a GPU is visible (``--nv`` was given) and each
fused op gives on it what its pure-PyTorch reference gives on the CPU, which also shows that the
extension carries code for this GPU's compute capability. Exit status 0, or 1 with the reasons.
"""

from __future__ import annotations

import argparse
import sys


def problems(gpu: bool) -> list[str]:
    import torch

    from medhpc import _ext
    from medhpc.ops import OPS, reference, spsa_perturb, vib_reparam

    found: list[str] = []
    if torch.version.cuda is None:
        found.append(f"torch {torch.__version__} is not a CUDA build")
    if not _ext.loaded():
        return [*found, f"medhpc._C did not load: {_ext.LOAD_ERROR}"]
    for op in OPS:
        for device in ("cpu", "cuda"):
            if not _ext.has_kernel(op, device):
                found.append(f"medhpc._C has no {device} kernel for {op}")
    if not gpu:
        return found
    if not torch.cuda.is_available():
        return [*found, "no GPU visible (apptainer needs --nv; the job needs a GPU from SLURM)"]
    mu = torch.linspace(-1, 1, 6 * 33).reshape(6, 33)
    a = torch.linspace(-3, 8, 6 * 33).reshape(6, 33)
    want = reference.vib_reparam(mu, a, 3, 7, 5, True, True)
    got = vib_reparam(mu.cuda(), a.cuda(), 3, seed=7, offset=5, relu=True, kl_reduction="mean")
    for name, w, g in zip(("z", "kl"), want, got, strict=True):
        if not torch.allclose(w, g.cpu(), rtol=1e-5, atol=1e-5):  # the tests' float32 tolerance
            found.append(f"vib_reparam on {torch.cuda.get_device_name()}: {name} differs from the reference")
    x = torch.rand(2, 3, 8, 8)
    want_p = reference.spsa_perturb(x, 0, 4, 0.05, 11, 0, 0.0, 1.0)
    got_p = spsa_perturb(x.cuda(), 0, 4, delta=0.05, seed=11, offset=0, clip=(0.0, 1.0))
    if not torch.allclose(want_p, got_p.cpu()):
        found.append(f"spsa_perturb on {torch.cuda.get_device_name()}: differs from the reference")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="also run the kernels on a visible GPU")
    args = parser.parse_args(argv)
    found = problems(args.gpu)
    for line in found:
        sys.stderr.write(f"check_image: {line}\n")
    if found:
        return 1
    import torch

    from medhpc import __version__

    where = torch.cuda.get_device_name() if args.gpu else "no GPU asked for"
    sys.stdout.write(f"check_image: medhpc {__version__}, torch {torch.__version__}, extension OK ({where})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
