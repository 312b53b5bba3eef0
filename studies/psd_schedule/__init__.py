"""The PSD schedule study (docs/robustness.md): run length, data size, many-to-many captions."""
