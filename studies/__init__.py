"""Research studies built on ``launch``: sweeps, reports and data preparation."""
