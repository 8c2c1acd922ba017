"""The version check each compatibility module runs at import."""

from __future__ import annotations

import importlib.metadata

from qtune.errors import QtuneError


def require(dist: str, supported: str, module: str) -> str | None:
    """The installed version of ``dist``, refused in one line unless it is within ``supported`` (a PEP 440
    specifier set); None when ``dist`` is not installed (the import that needs it says so, with its extra)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    if Version(version) not in SpecifierSet(supported):
        raise QtuneError(f"{module}: {dist} {version} is installed, but qtune's use of its internals is checked for "
                         f"{dist}{supported} only; pip install '{dist}{supported}'")
    return version
