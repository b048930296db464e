"""Print a pip constraints file that pins every direct dependency of dean_hf to its declared floor (`x>=1.2` ->
`x==1.2`): installing with it tests the floors pyproject.toml declares (pip's equivalent of uv's
`--resolution lowest-direct`). Usage: python .ci/floor_constraints.py [pyproject.toml] > floors.txt"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)")


def floors(pyproject: Path) -> list[str]:
    """`name==floor` for each direct dependency with a `>=` floor; a dependency without one is an error."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    out = []
    for dep in deps:
        found = _FLOOR.match(dep)
        if not found:
            raise SystemExit(f"{dep!r} declares no floor (name>=version): every direct dependency needs one")
        out.append(f"{found.group(1)}=={found.group(2)}")
    return out


if __name__ == "__main__":
    print("\n".join(floors(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
