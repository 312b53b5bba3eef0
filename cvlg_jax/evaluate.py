"""``python -m cvlg_jax.evaluate`` evaluates a checkpoint (the command: ``cvlg_jax/cli/evaluate.py``)."""
from cvlg_jax.cli import evaluate

if __name__ == "__main__":
  evaluate.run()
