"""One train step: the state, the jitted step, the embedding bank, the
optimizer and every sharding rule (all pure functions of config and mesh)."""
