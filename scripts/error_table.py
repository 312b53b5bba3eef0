"""The "Errors" table of docs/robustness.md, generated from the cases that
tests/cli/test_common_errors.py runs (what the user types -> the one line -> exit
code), so the table cannot promise a message the code does not print.

    python scripts/error_table.py [--write | --check]
"""

import importlib.util
import os
import sys

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


def table() -> str:
  rows = ["| mistake | command | what it prints (one line, start) | exit |",
          "|---|---|---|---|"]
  for name, flags, message, code in cases():
    command = "python -m cvlg_jax.main " + " ".join(flags)
    rows.append(f"| {name} | `{command}` | `{message} …` | {code} |")
  return "\n".join([BEGIN, *rows, END])


def main(argv) -> int:
  text = open(DOC).read()
  start, end = text.find(BEGIN), text.find(END)
  if start < 0 or end < 0:
    print(f"{DOC} lacks the {BEGIN} ... {END} markers", file=sys.stderr)
    return 1
  fresh = text[:start] + table() + text[end + len(END):]
  if "--write" in argv:
    open(DOC, "w").write(fresh)
  elif "--check" in argv and fresh != text:
    print("docs/robustness.md's error table is stale: run python "
          "scripts/error_table.py --write", file=sys.stderr)
    return 1
  elif "--check" not in argv:
    print(table())
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
