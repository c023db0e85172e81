"""Adversarial attacks over batches: FGSM, PGD, CW-L2, SPSA, APGD (CE, margin, DLR), FAB, Square (with
EOT where they follow gradients), the per-image worst case over them, the adaptive attack on an
uncertainty detector, and evaluation.

Every attack is a plain function ``attack(model, x, y=None, *, ..., seed=0) -> AttackResult``
over a batch of images in the pixel range, batched on the images' device with no host
synchronisation inside its iteration loop, reproducible from its seed. Each declares its facts
in an :class:`AttackSpec` (:mod:`medhpc.attacks.registry` lists them). :class:`AttackConfig`
and :func:`run_attack` describe and run one as a sweep job; :func:`evaluate_robustness` builds
the accuracy-under-attack table with gradient-masking warnings; ``python -m medhpc.attacks``
runs a list of attacks on a finished training run.
"""

# The registry first: it imports the attack modules (``apgd``, ``fgsm``, ...) before the functions of
# the same names, exported below, shadow them as attributes of this package.
from medhpc.attacks import registry as registry
from medhpc.attacks.adaptive import adaptive
from medhpc.attacks.apgd import apgd, apgd_ce, checkpoint_schedule
from medhpc.attacks.common import AttackResult, eot_gradient, perturbation_norms
from medhpc.attacks.config import ATTACKS, AttackConfig, AttackConfigError, paper_attacks, run_attack
from medhpc.attacks.cw import cw_l2
from medhpc.attacks.detector import Detector, calibrate
from medhpc.attacks.fab import fab
from medhpc.attacks.fgsm import fgsm
from medhpc.attacks.none import none
from medhpc.attacks.pgd import pgd
from medhpc.attacks.registry import attack_names, get_attack
from medhpc.attacks.robustness import attack_row, evaluate_robustness, masking_warnings
from medhpc.attacks.spec import AttackSpec
from medhpc.attacks.spsa import spsa, spsa_chunk, spsa_gradient
from medhpc.attacks.square import square
from medhpc.attacks.worst_case import worst_case

__all__ = [
    "ATTACKS",
    "Detector",
    "AttackConfig",
    "AttackConfigError",
    "AttackResult",
    "AttackSpec",
    "adaptive",
    "apgd",
    "apgd_ce",
    "attack_names",
    "attack_row",
    "calibrate",
    "checkpoint_schedule",
    "cw_l2",
    "eot_gradient",
    "fab",
    "evaluate_robustness",
    "fgsm",
    "get_attack",
    "masking_warnings",
    "none",
    "paper_attacks",
    "perturbation_norms",
    "pgd",
    "run_attack",
    "spsa",
    "spsa_chunk",
    "spsa_gradient",
    "square",
    "worst_case",
]
