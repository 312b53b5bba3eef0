"""The package layout of docs/design.md §9, generated from the code.

    python scripts/layout.py            # print the layout
    python scripts/layout.py --write    # rewrite it in docs/design.md
    python scripts/layout.py --check    # exit 1 if docs/design.md is stale

Every module of ``cvlg_jax``, ``launch`` and ``studies`` is listed with the
first line of its docstring (each module must have one), so the design
document cannot name a file that is gone or miss one that was added.
tests/test_package_layout.py runs ``--check``.
"""

from __future__ import annotations

import ast
import os
import sys

from generated import splice, write_or_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(REPO, "docs", "design.md")
BEGIN, END = "<!-- layout:begin (scripts/layout.py) -->", "<!-- layout:end -->"
PACKAGES = ("cvlg_jax", "launch", "studies")
# Folders summarised in one line each (what they hold, not every file).
FOLDERS = {
    "configs": "config files: get_config(arg) -> ml_collections.ConfigDict",
    "benchmarks": "scripts that print speed and memory ratios measured in one run",
    "scripts": "the README's two commands (demo.sh, test.sh) and doc generators",
    "tests": "tests/<package>/test_<module>[_aspect].py, one folder per package",
}


def summary(path: str) -> str:
  """First sentence of the module's docstring (a module without one is an
  error)."""
  doc = ast.get_docstring(ast.parse(open(path).read()))
  if not doc:
    raise ValueError(f"{os.path.relpath(path, REPO)} has no module docstring")
  paragraph = " ".join(doc.strip().split("\n\n")[0].split())
  end = paragraph.find(". ")
  return paragraph if end < 0 else paragraph[:end + 1]


def modules(package: str) -> list[str]:
  """Module paths of ``package`` relative to the repo, folders first."""
  out = []
  for folder, dirs, files in os.walk(os.path.join(REPO, package)):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
    for name in sorted(files):
      if name.endswith(".py"):
        out.append(os.path.relpath(os.path.join(folder, name), REPO))
  return out


def layout_lines() -> list[str]:
  lines = []
  for package in PACKAGES:
    for rel in modules(package):
      shown = rel[:-len("__init__.py")] if rel.endswith("__init__.py") else rel
      lines.append(f"{shown:<40} {summary(os.path.join(REPO, rel))}")
  for folder, what in FOLDERS.items():
    lines.append(f"{folder + '/':<40} {what}")
  return lines


def section() -> str:
  return "\n".join([BEGIN, "```", *layout_lines(), "```", END])


def main(argv) -> int:
  text = open(DESIGN).read()
  fresh = splice(text, BEGIN, END, "\n".join(["```", *layout_lines(), "```"]), DESIGN)
  done = write_or_check(DESIGN, fresh, argv, what="docs/design.md's layout",
                        command="scripts/layout.py")
  if done is None:
    print(section())
  return done or 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
