"""medhpc: adversarial robustness of medical image classifiers, at cluster scale."""

__version__ = "0.1.0"
