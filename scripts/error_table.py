"""The "Errors" table of docs/robustness.md, generated from the cases that
tests/cli/test_common_errors.py runs (what the user types -> the one line -> exit
code), so the table cannot promise a message the code does not print.

    python scripts/error_table.py [--write | --check]
"""

import importlib.util
import os
import sys

from generated import splice, write_or_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "robustness.md")
BEGIN, END = "<!-- errors:begin (scripts/error_table.py) -->", "<!-- errors:end -->"


def cases():
  path = os.path.join(REPO, "tests", "cli", "test_common_errors.py")
  spec = importlib.util.spec_from_file_location("test_common_errors", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.path.join(REPO, "tests"))  # its helper imports
  spec.loader.exec_module(module)
  return module.CASES


def rows() -> list[str]:
  out = ["| mistake | command | what it prints (one line, start) | exit |",
         "|---|---|---|---|"]
  for name, flags, message, code in cases():
    command = "python -m cvlg_jax.main " + " ".join(flags)
    out.append(f"| {name} | `{command}` | `{message} …` | {code} |")
  return out


def table() -> str:
  return "\n".join([BEGIN, *rows(), END])


def main(argv) -> int:
  text = open(DOC).read()
  try:
    fresh = splice(text, BEGIN, END, "\n".join(rows()), DOC)
  except ValueError as e:
    print(e, file=sys.stderr)
    return 1
  done = write_or_check(DOC, fresh, argv, what="docs/robustness.md's error table",
                        command="scripts/error_table.py")
  if done is None:
    print(table())
  return done or 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
