"""Locked parameters (LiT, Zhai et al. 2022: a pretrained image tower kept
as it is while the text tower learns to read it), chosen by ``train.freeze``.

A spec is comma-separated entries, each a shortcut or a regular expression
matched (``re.fullmatch``) against a parameter's path, ``/``-joined
(``image_tower/encoder/block0/attn/query/kernel``):

* ``image``: the image tower and its projection (open_clip ``--lock-image``);
* ``text``: the text tower and its projection (``--lock-text``);
* ``image_except_last=N``: the image tower except its last N blocks
  (transformer blocks of a ViT, bottlenecks of a ResNet); what follows the
  blocks (ViT ``ln_post``, ResNet ``attnpool``) and the projection still
  learn.

A frozen parameter costs no optimizer memory (its optax branch is
``set_to_zero``: no Adam moments) and no backward pass: the step sees it
through ``stop_gradient``, so JAX differentiates nothing that depends only on
frozen parameters (a locked image tower runs forward only). The step then
keeps the frozen leaves exactly as they were, bit for bit.

The same spec syntax picks which parameters ``train.init_from_params`` loads.
"""

from __future__ import annotations

import re

import jax

SHORTCUTS = {
    "image": r"image_tower/.*|image_proj/.*",
    "text": r"text_tower/.*|text_proj/.*",
}
EXCEPT_LAST = "image_except_last="
# Image-tower blocks in order: ViT encoder blocks, ResNet bottlenecks.
_BLOCK = re.compile(r"image_tower/(encoder/block(\d+)|layer(\d+)_(\d+))/")
_AFTER_BLOCKS = re.compile(r"image_tower/(ln_post|attnpool)/")


class FreezeSpecError(ValueError):
  """A spec that cannot be parsed, or that selects no parameter."""


def entries(spec: str) -> list[str]:
  return [e.strip() for e in spec.split(",") if e.strip()]


def check_syntax(spec: str, key: str = "train.freeze") -> None:
  """Raises FreezeSpecError (one line) for an entry that is neither a
  shortcut nor a valid regular expression."""
  for entry in entries(spec):
    if entry.startswith(EXCEPT_LAST):
      n = entry[len(EXCEPT_LAST):]
      if not n.isdigit():
        raise FreezeSpecError(f"config.{key}: {entry!r} needs a block count "
                              "N >= 0, e.g. image_except_last=2")
    elif entry not in SHORTCUTS:
      try:
        re.compile(entry)
      except re.error as e:
        raise FreezeSpecError(f"config.{key}: {entry!r} is neither a shortcut "
                              f"({', '.join(SHORTCUTS)}, {EXCEPT_LAST}N) nor a "
                              f"regular expression ({e})") from None


def path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def _block_id(name: str) -> tuple[int, ...] | None:
  """The image-tower block a parameter belongs to, in order (ViT block i ->
  (i,), ResNet layer s_j -> (s, j)); None outside the blocks."""
  m = _BLOCK.match(name)
  return None if m is None else tuple(int(g) for g in m.groups()[1:] if g is not None)


def _except_last(names: list[str], n: int, entry: str, key: str) -> set[str]:
  blocks = sorted({b for b in map(_block_id, names) if b is not None})
  if n > len(blocks):
    raise FreezeSpecError(f"config.{key}: {entry!r} but the image tower has "
                          f"{len(blocks)} blocks")
  trained = set(blocks[len(blocks) - n:])
  return {name for name in names
          if name.startswith("image_tower/") and not _AFTER_BLOCKS.match(name)
          and _block_id(name) not in trained}


def selected_names(names: list[str], spec: str, key: str = "train.freeze") -> set[str]:
  """The names among ``names`` that ``spec`` selects; FreezeSpecError for
  an entry that selects none (a typo would otherwise train everything)."""
  check_syntax(spec, key)
  chosen = set()
  for entry in entries(spec):
    if entry.startswith(EXCEPT_LAST):
      hit = _except_last(names, int(entry[len(EXCEPT_LAST):]), entry, key)
    else:
      pattern = re.compile(SHORTCUTS.get(entry, entry))
      hit = {name for name in names if pattern.fullmatch(name)}
    if not hit:
      raise FreezeSpecError(
          f"config.{key}: {entry!r} matches no parameter (paths look like "
          f"{names[0]!r})")
    chosen |= hit
  return chosen


def mask(params, spec: str, key: str = "train.freeze"):
  """A pytree like ``params`` of Python bools: True where ``spec`` selects
  the leaf (all False for an empty spec)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [path_name(p) for p, _ in leaves]
  chosen = selected_names(names, spec, key) if entries(spec) else set()
  return jax.tree_util.tree_unflatten(treedef, [n in chosen for n in names])


def optimizer_labels(spec: str):
  """``params -> labels`` for ``optax.multi_transform``: "frozen" or "trained"."""
  def labels(params):
    frozen = mask(params, spec)
    if all(jax.tree.leaves(frozen)):
      raise FreezeSpecError(f"config.train.freeze={spec!r} freezes every "
                            "parameter: nothing would train")
    return jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
  return labels


def stop_frozen(params, frozen):
  """``params`` with the frozen leaves behind ``stop_gradient``."""
  return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p,
                      params, frozen)


def keep_frozen(old, new, frozen):
  """``new`` with the frozen leaves taken from ``old`` (exactly: an update of
  zeros would still turn -0.0 into 0.0)."""
  return jax.tree.map(lambda o, n, f: o if f else n, old, new, frozen)
