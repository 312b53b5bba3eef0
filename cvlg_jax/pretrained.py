"""``python -m cvlg_jax.pretrained`` imports / exports released CLIP weights (``cvlg_jax/cli/weights.py``)."""
from cvlg_jax.cli import weights

if __name__ == "__main__":
  weights.run()
