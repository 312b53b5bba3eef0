"""The package's shape: the design doc's layout is the generated one, every
test file mirrors a module, only step/ decides the teacher or opens the
training source, and modules stay small."""

import ast
import os
import subprocess
import sys

from main_runner import REPO

MAX_LINES = 400


def _py_files(root):
  for folder, dirs, files in os.walk(os.path.join(REPO, root)):
    dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
    for name in files:
      if name.endswith(".py"):
        yield os.path.relpath(os.path.join(folder, name), REPO)


def test_design_doc_layout_is_the_generated_one():
  out = subprocess.run([sys.executable, "scripts/layout.py", "--check"], cwd=REPO,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr


def _code_folder(test_folder: str) -> str:
  """tests/step -> cvlg_jax/step; tests/launch -> launch; tests/ -> cvlg_jax."""
  if test_folder.startswith(("launch", "studies")):
    return test_folder
  return os.path.join("cvlg_jax", test_folder) if test_folder else "cvlg_jax"


def test_every_test_file_mirrors_a_module():
  """tests/<package>/test_<module>[_<aspect>].py tests <package>/<module>.py
  (tests/test_package_*.py are about the package as a whole)."""
  orphans = []
  for rel in _py_files("tests"):
    folder, name = os.path.split(os.path.relpath(rel, "tests"))
    if not name.startswith("test_") or name.startswith("test_package_"):
      continue
    stem, code = name[len("test_"):-3], os.path.join(REPO, _code_folder(folder))
    modules = {f[:-3] for f in os.listdir(code) if f.endswith(".py")} | {
        f[:-6] for f in os.listdir(code) if f.endswith(".ipynb")}
    if not any(stem == m or stem.startswith(m + "_") for m in modules):
      orphans.append(rel)
  assert not orphans, orphans


def _decides_teacher(node) -> bool:
  """``<...>.psd.teacher`` or ``psd.teacher``: reading which teacher to use."""
  if not (isinstance(node, ast.Attribute) and node.attr == "teacher"):
    return False
  value = node.value
  return (isinstance(value, ast.Attribute) and value.attr == "psd") or (
      isinstance(value, ast.Name) and value.id == "psd")


_OPENERS = {"train_data", "train_source", "open_source"}


def _opens_source(node) -> bool:
  """A call of the data layer's openers (``pipeline.train_data(...)``, ...)."""
  if not isinstance(node, ast.Call):
    return False
  f = node.func
  if isinstance(f, ast.Name):
    return f.id in _OPENERS
  return (isinstance(f, ast.Attribute) and f.attr in _OPENERS
          and isinstance(f.value, ast.Name)
          and f.value.id in ("pipeline", "train_sources"))


def test_only_the_plan_decides_the_teacher_and_opens_the_training_source():
  """config.py may check the allowed values; data/ implements the opening;
  step/plan.py is the one caller."""
  bad = []
  for rel in _py_files("cvlg_jax"):
    tree = ast.parse(open(os.path.join(REPO, rel)).read())
    for node in ast.walk(tree):
      if _decides_teacher(node) and rel not in ("cvlg_jax/config.py",
                                                "cvlg_jax/step/plan.py"):
        bad.append(f"{rel}:{node.lineno} reads loss.psd.teacher")
      if _opens_source(node) and not rel.startswith("cvlg_jax/data/") and (
          rel != "cvlg_jax/step/plan.py"):
        bad.append(f"{rel}:{node.lineno} opens the training source")
  assert not bad, bad


def test_the_checks_above_can_fail():
  assert _decides_teacher(ast.parse("config.loss.psd.teacher").body[0].value)
  assert _decides_teacher(ast.parse("psd.teacher == 'bank'").body[0].value.left)
  assert not _decides_teacher(ast.parse("plan.teacher").body[0].value)
  assert _opens_source(ast.parse("pipeline.train_data(config)").body[0].value)
  assert not _opens_source(ast.parse("ctx.train_data()").body[0].value)


def test_modules_stay_small():
  big = {}
  for root in ("cvlg_jax", "launch", "studies", "tests", "benchmarks", "scripts"):
    for rel in _py_files(root):
      n = sum(1 for _ in open(os.path.join(REPO, rel)))
      if n > MAX_LINES:
        big[rel] = n
  assert not big, big
