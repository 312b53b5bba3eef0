"""The commands: training, evaluation, weight import/export (``python -m
cvlg_jax.main | evaluate | pretrained`` run these)."""
