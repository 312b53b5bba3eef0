"""Every sharding decision lives here: the mesh, batch and parameter layouts.

The mesh has axes ("data", "fsdp"). The batch is split over both; parameters
(and optimizer state, which mirrors them) are replicated over "data" and, when
``mesh.fsdp > 1``, split over "fsdp" along their largest evenly divisible
dimension — big_vision's simple FSDP rule, which needs no per-layer
annotations and lets XLA insert the all-gathers.

Axes are ``AxisType.Auto`` (GSPMD propagation) rather than the Explicit
default of ``jax.make_mesh``: the models stay sharding-agnostic and only the
jit boundaries and the loss's ``shard_map`` name layouts.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = AXES
# Parameters smaller than this stay replicated under FSDP: splitting them
# saves nothing and costs a collective each.
FSDP_MIN_SIZE = 2 ** 14


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
  """Resolves -1 (= all remaining devices) and checks the product."""
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError("mesh: at most one of mesh.data, mesh.fsdp may be -1")
  for name, s in zip(AXES, sizes):
    if s == 0 or s < -1:
      raise ValueError(f"mesh.{name}={s} must be a positive size or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices are not divisible by "
                       f"the fixed mesh size {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} = "
                     f"{math.prod(sizes)} does not match the {num_devices} "
                     "available devices")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg.data, mesh_cfg.fsdp, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) dimension over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape, fsdp_size: int) -> P:
  """FSDP rule: shard the largest dimension divisible by the fsdp size."""
  if fsdp_size <= 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_state):
  """Shardings for a pytree of arrays (params, optimizer state, ...)."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp)), abstract_state)


def shard_batch(batch, mesh: Mesh):
  """Places a host-local numpy batch on the mesh, rows over every device.

  Multi-host: each process passes its own rows and the global array is
  assembled with ``jax.make_array_from_process_local_data``.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
