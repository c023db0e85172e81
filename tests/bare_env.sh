#!/bin/sh
# A venv with medhpc's runtime dependencies and pytest only (no test extras, no parity
# references, no pytest plugins), linked from an existing full venv: checks that the suite
# collects, and that `-m gpu` runs, where the extras are missing (a bare GPU node).
#   tests/bare_env.sh [FULL_VENV] [BARE_VENV]      (defaults: .venv, /tmp/medhpc-bare)
#   BARE_VENV/bin/python -m pytest -m gpu --collect-only -q
set -eu
full=${1:-.venv}
bare=${2:-/tmp/medhpc-bare}
rm -rf "$bare"
"$full/bin/python" -m venv --without-pip "$bare"
"$full/bin/python" - "$bare" <<'PY'
import importlib.metadata as md, pathlib, sys, sysconfig, tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

bare = pathlib.Path(sys.argv[1]) / pathlib.Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
todo = [Requirement(r) for r in tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]["dependencies"]]
todo.append(Requirement("pytest"))
seen: set[str] = set()
while todo:  # the dependency closure: each requirement with the extras it names
    req = todo.pop()
    name = canonicalize_name(req.name)
    if name in seen:
        continue
    seen.add(name)
    dist = md.distribution(req.name)
    for r in map(Requirement, dist.requires or []):
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
            todo.append(r)
    site = pathlib.Path(str(dist.locate_file("")))
    for top in sorted({f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}):
        if (site / top).exists() and not (bare / top).exists():
            (bare / top).symlink_to(site / top)
print(f"{bare}: {len(seen)} distributions: {' '.join(sorted(seen))}")
PY
