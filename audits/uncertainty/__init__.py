"""Uncertainty and data-shift audits: calibration, conformal sets, disagreement, OOD, concordance,
drift, segments, projections. Shared scores live in scores.py, ood.py and ensemble.py."""
