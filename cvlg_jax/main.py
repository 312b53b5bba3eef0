"""``python -m cvlg_jax.main`` trains a model (the command: ``cvlg_jax/cli/train.py``)."""
from cvlg_jax.cli import train

if __name__ == "__main__":
  train.run()
