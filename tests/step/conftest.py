"""The step tests' shared fixtures (one FSDP initialisation per module)."""
from train_fixtures import data_parallel_run, fsdp_init  # noqa: F401  (fixtures)
