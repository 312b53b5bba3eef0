"""What a compiled program moves between chips, read from its optimized HLO.

XLA's ``cost_analysis`` gives FLOPs and bytes accessed but not collective
traffic, so it is read here from ``compiled.as_text()``. The optimized HLO of
an SPMD program is the per-device program: shapes are already per chip.

Convention: each collective counts the bytes of its *result* on one chip
(all-gather: the gathered buffer; reduce-scatter: this chip's shard;
all-reduce: the reduced buffer; all-to-all and collective-permute: what is
received). A ring moves (n-1)/n of that over the links for all-gather, (n-1)
x for reduce-scatter and 2 (n-1)/n for all-reduce; the roofline applies those
factors (``benchmarks/scale_plan.py``). An async pair (``-start`` /
``-done``) is counted once; XLA:TPU's decomposition of one collective into a
chain of fusions (same ``chain_id``) is counted once; a collective inside a
loop body is counted once per appearance, not per trip.
"""

from __future__ import annotations

import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
         "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
          "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
# "%name = <shape> opcode(", the shape possibly a tuple "(f32[..]{..}, ...)".
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+"
                          r"(?P<op>[a-z][\w\-]*)\(", re.M)
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+[0-9]*(?:e[0-9]m[0-9]\w*)?)\[(?P<dims>[0-9,]*)\]")
_CHAIN = re.compile(r'chain_id="([^"]+)"')


def _arrays(shape_text: str) -> list[tuple[str, list[int]]]:
  """(dtype, dims) of every array in an HLO shape (tuples flattened)."""
  return [(m["dtype"], [int(d) for d in m["dims"].split(",") if d])
          for m in _ARRAY.finditer(shape_text) if m["dtype"] in _BYTES]


def _nbytes(dtype: str, dims: list[int]) -> int:
  n = _BYTES[dtype]
  for d in dims:
    n *= d
  return n


def collective_bytes(hlo_text: str) -> dict[str, dict[str, int]]:
  """``{kind: {"count", "bytes"}}`` (per chip) for each collective kind."""
  out = {kind: {"count": 0, "bytes": 0} for kind in KINDS}
  chains = set()
  for m in _INSTRUCTION.finditer(hlo_text):
    op = m["op"]
    if op.endswith("-done"):
      continue
    kind = op.removesuffix("-start")
    if kind not in KINDS:
      continue
    arrays = _arrays(m["shape"])
    if op.endswith("-start") and m["shape"].lstrip().startswith("("):
      # (operands..., results..., contexts): keep the results.
      arrays = [a for a in arrays if a[1] or a[0] not in ("u32", "s32")]
      if kind != "all-reduce":
        arrays = arrays[len(arrays) // 2:]
    line = hlo_text[m.end():hlo_text.find("\n", m.end())]
    chain = _CHAIN.search(line)
    if chain:
      if (kind, chain.group(1)) in chains:
        continue
      chains.add((kind, chain.group(1)))
    out[kind]["count"] += 1
    out[kind]["bytes"] += sum(_nbytes(*a) for a in arrays)
  return out
