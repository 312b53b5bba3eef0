"""docs/config.md, generated from the schema (cvlg_jax/config.py) and the
one-line meanings beside it (cvlg_jax/config_reference.py).

    python scripts/config_reference.py [--write | --check]
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DOC = os.path.join(REPO, "docs", "config.md")

from cvlg_jax.config_reference import markdown  # noqa: E402


def main(argv) -> int:
  fresh = markdown()
  if "--write" in argv:
    with open(DOC, "w") as f:
      f.write(fresh)
  elif "--check" in argv:
    if not os.path.exists(DOC) or open(DOC).read() != fresh:
      print("docs/config.md is stale: run python scripts/config_reference.py "
            "--write", file=sys.stderr)
      return 1
  else:
    print(fresh, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
