"""The noise-robustness study (docs/robustness.md): sweep, report, diagnosis."""
