"""A training run around the step: the loop, checkpoints, resume, stopping,
what the run records about itself, and joining a multi-process job."""
