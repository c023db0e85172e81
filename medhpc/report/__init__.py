"""Reports from a sweep's stored results: the first seed's tables, uncertainty-based detection
and abstention, Grad-CAM and attention maps.

* :mod:`medhpc.report.uncertainty` — measures from a stochastic model's draws, detection ROC,
  selective prediction (numpy);
* :mod:`medhpc.report.maps` — Grad-CAM (one target per image), attention maps, their scores
  against lesion masks and their clean-to-adversarial shift (torch);
* :mod:`medhpc.report.adaptive` — an attack on an uncertainty detector against the detector
  it attacked, beside its non-adaptive counterpart (numpy);
* :mod:`medhpc.report.analyse` — one model's evaluation from its shards (the sweep's
  ``evaluate`` job);
* :mod:`medhpc.report.table`, :mod:`medhpc.report.tables` — tables as Markdown, CSV, LaTeX;
* :mod:`medhpc.report.plots` — the figures;
* :mod:`medhpc.report.build` — the report folder and its index page (the ``report`` job).
"""

from medhpc.report.config import ReportSettings

__all__ = ["ReportSettings"]
