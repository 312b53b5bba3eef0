"""The package's import graph has no cycles, and data never imports evaluation.

Read from the source with ``ast`` (function-level imports included), so a cycle
hidden behind a lazy import counts too."""

import ast
import os

PKG = "cvlg_jax"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
  mods = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PKG)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        mods[mod.removesuffix(".__init__")] = path
  return mods


def import_graph() -> dict[str, set[str]]:
  """module -> the cvlg_jax modules it imports (anywhere in its body)."""
  mods = _modules()

  def resolve(name):
    while name and name not in mods:
      name = name.rpartition(".")[0]
    return name

  graph = {}
  for mod, path in mods.items():
    deps = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        deps |= {resolve(a.name) for a in node.names if a.name.startswith(PKG)}
      elif isinstance(node, ast.ImportFrom) and not node.level and (
          node.module or "").startswith(PKG):
        deps |= {resolve(f"{node.module}.{a.name}") for a in node.names}
    graph[mod] = deps - {mod, ""}
  return graph


def cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


# The rooms from the bottom up (docs/design.md §9): a module may import its
# own layer and the ones below, never above. cvlg_jax.config stands apart: the
# schema reads every room's registry to check allowed values, and every room
# may read the schema (no cycle: test_no_import_cycles).
LAYERS = (("cvlg_jax.fileio", "cvlg_jax.data", "cvlg_jax.models", "cvlg_jax.losses"),
          ("cvlg_jax.step",),
          ("cvlg_jax.evaluation",),
          ("cvlg_jax.run",),
          ("cvlg_jax.cli", "cvlg_jax.main", "cvlg_jax.evaluate", "cvlg_jax.pretrained"))


def _layer(module):
  for i, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return i
  return None


def test_layers():
  """Data, models and losses never reach up into training or evaluation;
  the step never into evaluation or the run; nothing into the commands."""
  graph = import_graph()
  bad = sorted((m, d) for m, deps in graph.items() for d in deps
               if _layer(m) is not None and _layer(d) is not None
               and _layer(d) > _layer(m))
  assert not bad, bad


def test_tokenizers_import_as_documented():
  from cvlg_jax.data import clip_bpe
  from cvlg_jax.data.tokenizers import ClipBpeTokenizer
  assert ClipBpeTokenizer is clip_bpe.ClipBpeTokenizer
