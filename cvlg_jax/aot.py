"""``python -m cvlg_jax.aot`` compiles a config for a TPU slice (``cvlg_jax/cli/aot.py``)."""
from cvlg_jax.cli import aot

if __name__ == "__main__":
  aot.run()
