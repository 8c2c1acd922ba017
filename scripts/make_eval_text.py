"""Rebuild data/python-docs/: the fixed plain-text excerpt that ``qtune eval``/``qtune report`` score.

The text is six chapters of the Python 3.11 tutorial, reStructuredText sources as shipped in
Debian 12's ``python3.11-doc`` package (``usr/share/doc/python3.11/html/_sources/``), under the PSF
license (copied beside them as LICENSE.rst.txt). Reproduce with::

    python scripts/make_eval_text.py            # apt-get download + dpkg-deb -x into a temp dir
    python scripts/make_eval_text.py --from /tmp/pydoc   # an already extracted package root

The files are copied byte for byte; SHA256SUMS records them so a change is visible.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "python3.11-doc"
SOURCES = "usr/share/doc/python3.11/html/_sources"
FILES = [  # tutorial chapters, in reading order (~44k SmolLM2 tokens, ~168 kB)
    "tutorial/introduction.rst.txt",
    "tutorial/controlflow.rst.txt",
    "tutorial/datastructures.rst.txt",
    "tutorial/modules.rst.txt",
    "tutorial/errors.rst.txt",
    "tutorial/classes.rst.txt",
]
LICENSE = "license.rst.txt"
OUT = Path(__file__).resolve().parent.parent / "data" / "python-docs"


def extract(workdir: Path) -> Path:
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True)
    (deb,) = glob.glob(str(workdir / f"{PACKAGE}_*.deb"))
    root = workdir / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    print(f"extracted {Path(deb).name}")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="root", help="an extracted python3.11-doc package root")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else extract(Path(tmp))
        src = root / SOURCES
        sums = []
        for rel in FILES + [LICENSE]:
            dest = OUT / (rel if rel != LICENSE else "LICENSE.rst.txt")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dest)
            sums.append(f"{hashlib.sha256(dest.read_bytes()).hexdigest()}  {dest.relative_to(OUT)}")
        (OUT / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
    print(f"wrote {len(FILES)} text files and the license to {OUT}")


if __name__ == "__main__":
    main()
