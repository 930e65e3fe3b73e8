"""lottery: find lottery tickets and compact models with a reproducible DVC + MLflow pipeline."""

__version__ = "0.1.0"
