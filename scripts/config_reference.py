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
from generated import write_or_check  # noqa: E402


def main(argv) -> int:
  fresh = markdown()
  done = write_or_check(DOC, fresh, argv, what="docs/config.md",
                        command="scripts/config_reference.py")
  if done is None:
    print(fresh, end="")
  return done or 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
