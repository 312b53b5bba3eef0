"""The memorisation study (docs/robustness.md): sweep, report, digits data."""
