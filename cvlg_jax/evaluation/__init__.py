"""Evaluators: zero-shot, retrieval, linear probe, effective robustness."""
