"""Launching cvlg_jax runs: config sweeps (local or TPU VM), TPU VM helpers.

Sweep files import their helpers from :mod:`launch.spec`; the command line is
``python -m launch.sweep --sweep=launch/sweeps/<name>.py``.
"""
