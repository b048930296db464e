"""Print a pip constraints file that pins every direct dependency of dean_hf, and those of the extras named, to its
declared floor (`x>=1.2` -> `x==1.2`): installing with it tests the floors pyproject.toml declares (pip's equivalent
of uv's `--resolution lowest-direct`).

Usage: python .ci/floor_constraints.py [pyproject.toml] [--extras gpu,...] > floors.txt"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)")


def floors(pyproject: Path, extras: tuple[str, ...] = ()) -> list[str]:
    """`name==floor` for each direct dependency, and each requirement of `extras`, with a `>=` floor; one without
    a floor is an error."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"extras {unknown} are not in {pyproject}: expected some of {sorted(optional)}")
    out = []
    for dep in project["dependencies"] + [d for e in extras for d in optional[e]]:
        found = _FLOOR.match(dep)
        if not found:
            raise SystemExit(f"{dep!r} declares no floor (name>=version): every direct dependency needs one")
        out.append(f"{found.group(1)}=={found.group(2)}")
    return list(dict.fromkeys(out))  # an extra may repeat another's requirement


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml")
    parser.add_argument("--extras", default="", help="comma-separated extras whose floors are pinned too")
    args = parser.parse_args()
    print("\n".join(floors(Path(args.pyproject), tuple(e for e in args.extras.split(",") if e))))
