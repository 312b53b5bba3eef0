"""cvlg_jax: robust image-text pre-training (CLIP + Progressive Self-Distillation) in JAX."""

__version__ = "0.1.0"
