"""Every sharding decision lives here: the mesh, batch and parameter layouts.

The mesh has axes ("data", "fsdp"). The batch is split over both; parameters
are replicated over "data" and, when ``mesh.fsdp > 1``, split over "fsdp"
(FSDP: XLA all-gathers each weight where it is used and reduce-scatters its
gradient). One set of partition rules lays out the whole train state: each
array's leaf path (the same for a param, its Adam moments and its EMA copy)
gives *logical* names to its dimensions (``PARAM_AXES``) and
``LOGICAL_TO_MESH`` maps those names to mesh axes. Arrays no rule names fall
back to big_vision's rule, the largest evenly divisible dimension.

Axes are ``AxisType.Auto`` (GSPMD propagation) rather than the Explicit
default of ``jax.make_mesh``: the models stay sharding-agnostic and only the
jit boundaries and the loss's ``shard_map`` name layouts.
"""

from __future__ import annotations

import math
import re

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


# Leaf-path regex (searched in "a/b/c" paths) -> logical name per dimension.
PARAM_AXES = (
    (r"attn/(query|key|value)/kernel$", ("embed", "heads", "head_dim")),
    (r"attn/out/kernel$", ("heads", "head_dim", "embed")),
    (r"mlp/fc1/kernel$", ("embed", "mlp")),
    (r"mlp/fc2/kernel$", ("mlp", "embed")),
    (r"token_embedding/embedding$", ("vocab", "embed")),
    (r"proj/kernel$", ("embed", "proj")),   # image/text proj, attention pool
    (r"(conv\w*|patch_embed)/kernel$", ("kh", "kw", "conv_in", "conv_out")),
)
# Logical name -> mesh axis (unlisted names stay unsplit). Dimensions are
# tried left to right; each mesh axis splits at most one that it divides.
LOGICAL_TO_MESH = {"embed": "fsdp", "mlp": "fsdp", "vocab": "fsdp",
                   "proj": "fsdp", "conv_out": "fsdp"}


def logical_axes(path: str, ndim: int):
  """Logical dimension names of the array at leaf ``path``, or None."""
  for pattern, names in PARAM_AXES:
    if re.search(pattern, path) and len(names) == ndim:
      return names
  return None


def param_spec(path: str, shape, mesh_shape) -> P:
  """PartitionSpec of one train-state array under the rules above."""
  fsdp = mesh_shape.get("fsdp", 1)
  if fsdp <= 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  names = logical_axes(path, len(shape))
  spec, used = [None] * len(shape), set()
  if names is None:  # big_vision's rule: the largest dimension that divides
    for dim in np.argsort(shape, kind="stable")[::-1]:
      if shape[dim] % fsdp == 0:
        spec[dim] = "fsdp"
        break
    return P(*spec)
  for dim, name in enumerate(names):
    axis = LOGICAL_TO_MESH.get(name)
    if axis and axis not in used and shape[dim] % mesh_shape[axis] == 0:
      spec[dim] = axis
      used.add(axis)
  return P(*spec)


# Train-state fields whose rows are examples (the embedding bank): laid out
# like the batch, rows over every device, so their memory splits evenly.
EXAMPLE_ROW_FIELDS = ("bank",)


def state_shardings(mesh: Mesh, abstract_state):
  """Shardings for a pytree of arrays (params, optimizer state, ...)."""
  shape = dict(mesh.shape)

  def spec(path, x):
    path = jax.tree_util.keystr(path, simple=True, separator="/")
    if path.split("/", 1)[0] in EXAMPLE_ROW_FIELDS:
      return NamedSharding(mesh, P(BATCH_AXES))
    return NamedSharding(mesh, param_spec(path, np.shape(x), shape))

  return jax.tree_util.tree_map_with_path(spec, abstract_state)


def process_batch_block(mesh: Mesh) -> tuple[int, int]:
  """(index, count): this process's devices hold block ``index`` of ``count``
  equal blocks of rows of every global batch, which is what it must read
  (``data.process_share``). Its position in the mesh, not necessarily its
  process index."""
  rows = mesh.size  # one row per device is enough to see the layout
  owned = sorted({(s[0].start or 0, rows if s[0].stop is None else s[0].stop)
                  for s in batch_sharding(mesh).addressable_devices_indices_map(
                      (rows,)).values()})
  lo, hi = owned[0][0], owned[-1][1]
  covered = sum(stop - start for start, stop in owned)
  count = jax.process_count()
  if covered != hi - lo or (hi - lo) * count != rows:
    raise ValueError(f"process {jax.process_index()} holds batch rows {owned} "
                     f"of {rows}: not one contiguous block of 1/{count} (order "
                     "the mesh devices by process)")
  return lo // (hi - lo), count


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
