"""The shard schema: the public contract for anyone reading medhpc's attack outputs.

A *shard* is one HDF5 file holding the outcome of one attack configuration, on one trained
model, over one contiguous slice ``[start, stop)`` of one split of a prepared dataset
(:mod:`medhpc.data.prepare`). The shards of one *set* (one ``config_hash``) tile the slice
``[0, set_size)`` of the split without overlap. Everything is readable with plain h5py and
numpy; nothing below needs medhpc.

Storage
-------
Every dataset is chunked along the image axis and stored with the ``shuffle`` and ``gzip``
filters (gzip level 1 by default; a writer may leave gzip out) and ``fletcher32`` (an HDF5
checksum per chunk: a flipped byte makes the read of that chunk fail with ``OSError``).
Next to each shard ``NAME.h5`` a sidecar ``NAME.h5.sha256``
holds the SHA-256 of the whole file in ``sha256sum`` format (``<hex>  NAME.h5``), so
``sha256sum -c NAME.h5.sha256`` checks a shard without medhpc. A shard is *verified* when its
sidecar exists and matches; a shard without one is *unverified* (a write was interrupted
between the rename and the sidecar, or the sidecar was lost) and a rerun redoes it.
Shards are written to a temporary ``.NAME.h5.<random>.tmp`` in the same folder and renamed
into place only when complete, so a file under a final name is never partial.

Datasets (N = ``stop - start`` images, C classes, S model draws)
-----------------------------------------------------------------

====================== ================ ===================== =================================================
name                   dtype            shape                 meaning
====================== ================ ===================== =================================================
``x_adv``              float32/float16  (N, 3, H, W)          adversarial images as the model took them (NCHW,
                                                              pixel range of the attack's clip, [0, 1] by
                                                              default); for attack ``none`` the clean images
``index``              int64            (N,)                  indices into the prepared split: start .. stop-1
``ids``                UTF-8 (fixed)    (N,)                  image ids of the prepared split
``labels``             int64            (N,)                  true labels
``attack_labels``      int64            (N,)                  labels the attack used: true labels, the model's
                                                              clean predictions (label mode ``pred``) or the
                                                              targets of a targeted attack
``clean_pred``         int64            (N,)                  prediction on the clean image (argmax of
                                                              ``clean_probs``)
``adv_pred``           int64            (N,)                  the attack's final prediction on ``x_adv``, the
                                                              one ``success`` refers to
``clean_probs``        float32          (N, C)                softmax of the model's logits on the clean image
                                                              (a stochastic model averages its draws as its
                                                              config says)
``adv_probs``          float32          (N, C)                the same on ``x_adv``
``l2``                 float32          (N,)                  L2 norm of ``x_adv - x`` (computed in float64 on
                                                              the unrounded image)
``linf``               float32          (N,)                  L∞ norm of ``x_adv - x`` (same)
``success``            bool (HDF5 enum) (N,)                  the attack achieved its goal (untargeted: the
                                                              prediction left ``attack_labels``; targeted: it
                                                              reached the target)
``const``              float32          (N,)                  CW-L2 only: trade-off constant of each image's
                                                              best example (NaN where the attack failed)
``queries``            int64            (N,)                  score-based attacks (Square, SPSA): model queries
                                                              spent on each image
``min_norm``           float32          (N,)                  minimum-norm attacks (FAB) and the worst case:
                                                              the smallest successful perturbation's norm
                                                              (inf where none was found)
``broken_by``          int64            (N,)                  the worst case: the index of the member that
                                                              broke the image, -1 where none did (the members
                                                              are in the attack config attribute)
``clean_sample_probs`` float32          (S, N, C)             stochastic models only: softmax of each of the S
                                                              draws on the clean image
``adv_sample_probs``   float32          (S, N, C)             stochastic models only: the same on ``x_adv``
====================== ================ ===================== =================================================

Image precision (``image_dtype``)
---------------------------------
``float32`` (the default) stores exactly the images the attack produced and the model was
evaluated on. ``float16`` halves the size but rounds: its spacing is 2**-11 ≈ 4.9e-4 in
[0.5, 1), so a pixel moves by up to 2.4e-4 — about 1 % of an ε = 0.02 budget, enough to
leave the ε-ball by that much and, near a decision boundary, to change the prediction. With
``float16``, ``l2``, ``linf``, ``success`` and the predictions describe the unrounded image.
uint8 is not offered: its 1/255 ≈ 3.9e-3 steps are a fifth of ε = 0.02.

Attributes (on the file's root group)
-------------------------------------

==================== ======== ==================================================================
name                 type     meaning
==================== ======== ==================================================================
``format``           str      always ``"medhpc.shard"``
``schema_version``   int      this schema's version (:data:`SCHEMA_VERSION`)
``medhpc_version``   str      the medhpc that wrote the shard
``created``          str      UTC time the shard was completed, ISO 8601 (``SOURCE_DATE_EPOCH``
                              when that is set, so that reruns give byte-identical shards)
``config_hash``      str      names the set the shard belongs to (shared by all its shards)
``attack_config``    str      JSON of the attack config (``medhpc.config.to_dict``)
``attack_hash``      str      ``medhpc.config.config_hash`` of the attack config
``attack_name``      str      short label, e.g. ``pgd-linf-eps0.02-s5``
``model_config``     str      JSON of the model config, ``null`` when not given
``model_hash``       str      hash naming the trained model (the training run's config hash)
``run``              str      the training run (folder or checkpoint) the model came from, or ""
``dataset``          str      the prepared cache the images came from, or ""
``split``            str      ``train``, ``val`` or ``test``
``start``, ``stop``  int      the slice of the split this shard holds
``set_size``         int      the set tiles ``[0, set_size)`` of the split; -1 when unknown
``seed``             int      the attack seed; the batch whose first image has split index i
                              runs under ``derive_seed(seed, i)`` (medhpc.attacks.common), and
                              its probabilities under ``derive_seed(seed, i, 1)`` (clean) and
                              ``derive_seed(seed, i, 2)`` (adversarial)
``samples``          int      S, draws stored per image (0 for a deterministic model)
``classes``          int      C
``image_dtype``      str      ``float32`` or ``float16``
``meta``             str      JSON object of caller-defined extras (``{}`` when none)
==================== ======== ==================================================================

JSON attributes are UTF-8 strings: ``json.loads(f.attrs["attack_config"])``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

#: Version of the layout above. Readers refuse shards of a newer version.
SCHEMA_VERSION = 1
#: The ``format`` attribute of every shard.
FORMAT = "medhpc.shard"
#: Suffix of a shard's checksum sidecar (``NAME.h5`` -> ``NAME.h5.sha256``).
SIDECAR_SUFFIX = ".sha256"
#: Image precisions the writer offers.
IMAGE_DTYPES: tuple[str, ...] = ("float32", "float16")
#: The splits a shard can come from (its ``split`` attribute).
SPLITS: tuple[str, ...] = ("train", "val", "test")

Kind = Literal["float", "int", "bool", "str"]


@dataclass(frozen=True)
class Field:
    """One dataset of the schema.

    ``axes`` names the dimensions (``N`` images, ``C`` classes, ``S`` draws, ``...`` the image
    dimensions); ``kind`` is what the writer accepts, ``dtype`` what it stores (``None``: the
    image dtype chosen at write time).
    """

    name: str
    kind: Kind
    dtype: str | None
    axes: tuple[str, ...]
    required: bool = True

    @property
    def image_axis(self) -> int:
        """The axis that runs over images (1 for the per-draw fields, else 0)."""
        return self.axes.index("N")


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("x_adv", "float", None, ("N", "...")),
        Field("index", "int", "int64", ("N",)),
        Field("ids", "str", "utf-8", ("N",)),
        Field("labels", "int", "int64", ("N",)),
        Field("attack_labels", "int", "int64", ("N",)),
        Field("clean_pred", "int", "int64", ("N",)),
        Field("adv_pred", "int", "int64", ("N",)),
        Field("clean_probs", "float", "float32", ("N", "C")),
        Field("adv_probs", "float", "float32", ("N", "C")),
        Field("l2", "float", "float32", ("N",)),
        Field("linf", "float", "float32", ("N",)),
        Field("success", "bool", "bool", ("N",)),
        Field("const", "float", "float32", ("N",), required=False),
        Field("queries", "int", "int64", ("N",), required=False),
        Field("min_norm", "float", "float32", ("N",), required=False),
        Field("broken_by", "int", "int64", ("N",), required=False),
        Field("clean_sample_probs", "float", "float32", ("S", "N", "C"), required=False),
        Field("adv_sample_probs", "float", "float32", ("S", "N", "C"), required=False),
    )
}
#: Fields present exactly when the model is stochastic (``samples`` > 0).
SAMPLE_FIELDS: tuple[str, ...] = ("clean_sample_probs", "adv_sample_probs")
#: Per-image fields only some attacks give: each is in every batch of a shard or in none.
ATTACK_FIELDS: tuple[str, ...] = ("const", "queries", "min_norm", "broken_by")
#: Fields every shard has.
REQUIRED: tuple[str, ...] = tuple(name for name, f in FIELDS.items() if f.required)
#: Fields that hold class labels, each in ``[0, classes)``.
LABEL_FIELDS: tuple[str, ...] = ("labels", "attack_labels", "clean_pred", "adv_pred")

#: Attributes every shard has, with their Python types.
ATTRS: dict[str, type] = {
    "format": str,
    "schema_version": int,
    "medhpc_version": str,
    "created": str,
    "config_hash": str,
    "attack_config": str,
    "attack_hash": str,
    "attack_name": str,
    "model_config": str,
    "model_hash": str,
    "run": str,
    "dataset": str,
    "split": str,
    "start": int,
    "stop": int,
    "set_size": int,
    "seed": int,
    "samples": int,
    "classes": int,
    "image_dtype": str,
    "meta": str,
}
#: Attributes that hold JSON text.
JSON_ATTRS: tuple[str, ...] = ("attack_config", "model_config", "meta")

_NAME = re.compile(r"^(?P<hash>[0-9a-f]+)-(?P<start>\d+)-(?P<stop>\d+)\.h5$")


def shard_filename(config_hash: str, start: int, stop: int) -> str:
    """The conventional file name of a shard: ``<config_hash>-<start>-<stop>.h5``.

    Zero-padded so that names sort in index order; :func:`medhpc.store.verify_dir` checks
    that a file with a name of this form holds what its name says (a swapped shard).
    """
    if not re.fullmatch(r"[0-9a-f]+", config_hash):
        raise ValueError(f"config_hash must be lowercase hex, got {config_hash!r}")
    if not 0 <= start < stop:
        raise ValueError(f"need 0 <= start < stop, got start={start}, stop={stop}")
    return f"{config_hash}-{start:08d}-{stop:08d}.h5"


def parse_shard_filename(name: str) -> tuple[str, int, int] | None:
    """``(config_hash, start, stop)`` from a conventional shard name, else None."""
    m = _NAME.match(name)
    if m is None:
        return None
    return m["hash"], int(m["start"]), int(m["stop"])


def is_temporary(name: str) -> bool:
    """Whether a file name is a temporary of an interrupted write.

    :func:`medhpc.atomic.atomic_path` writes ``.NAME.<random>.tmp``; the data cache's writer
    ``.NAME.tmp-TOKEN``.
    """
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)
