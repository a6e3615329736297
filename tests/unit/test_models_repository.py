"""The model repository layout, manifests and hash checks, on small synthetic version directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fogline.errors import ConfigError, ModelNotFound
from fogline.models.repository import (
    ModelRepository,
    default_models_dir,
    hash_problems,
    read_manifest,
    write_manifest,
)

pytestmark = pytest.mark.unit


def _version(root: Path, name: str, version: str, payload: bytes = b"weights") -> Path:
    vdir = root / name / version
    (vdir / "full").mkdir(parents=True)
    (vdir / "model.int8.onnx").write_bytes(payload)
    (vdir / "full" / "config.json").write_text("{}")
    write_manifest(vdir, {"name": name, "version": version, "inputs": [], "outputs": [], "artifacts": {}})
    return vdir


def test_versions_sorted_numerically_and_newest_resolved(tmp_path: Path) -> None:
    for v in ("2", "10", "1"):
        _version(tmp_path, "digits", v)
    (tmp_path / "digits" / ".tmp-half-built").mkdir()  # a build in progress is not a version
    (tmp_path / "digits" / "3").mkdir()  # no manifest: not a version either
    repo = ModelRepository(tmp_path)
    assert repo.names() == ["digits"]
    assert repo.versions("digits") == ["1", "2", "10"]
    assert repo.resolve("digits") == tmp_path / "digits" / "10"
    assert repo.resolve("digits", "2") == tmp_path / "digits" / "2"
    assert repo.manifest("digits", "1")["version"] == "1"


def test_unknown_model_or_version_is_model_not_found(tmp_path: Path) -> None:
    _version(tmp_path, "digits", "1")
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelNotFound, match=r"'minilm' not found .*available: digits"):
        repo.resolve("minilm")
    with pytest.raises(ModelNotFound, match="no version '7'"):
        repo.resolve("digits", "7")
    assert ModelRepository(tmp_path / "nowhere").names() == []


def test_manifest_lists_every_file_with_hash_and_size(tmp_path: Path) -> None:
    vdir = _version(tmp_path, "digits", "1", b"abc")
    files = read_manifest(vdir)["files"]
    assert set(files) == {"model.int8.onnx", "full/config.json"}
    assert files["model.int8.onnx"] == {
        "bytes": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    assert hash_problems(vdir) == []


def test_flipped_byte_missing_and_extra_files_are_reported(tmp_path: Path) -> None:
    vdir = _version(tmp_path, "digits", "1", b"\x00" * 64)
    data = bytearray((vdir / "model.int8.onnx").read_bytes())
    data[10] ^= 0x01
    (vdir / "model.int8.onnx").write_bytes(bytes(data))
    assert hash_problems(vdir) == [f"{vdir / 'model.int8.onnx'}: sha256 mismatch (file corrupt or modified)"]
    (vdir / "full" / "config.json").unlink()
    (vdir / "stray.bin").write_bytes(b"?")
    problems = hash_problems(vdir)
    assert any("config.json: missing" in p for p in problems)
    assert any("stray.bin: not listed" in p for p in problems)


def test_bad_manifest_is_a_config_error(tmp_path: Path) -> None:
    vdir = tmp_path / "m" / "1"
    vdir.mkdir(parents=True)
    with pytest.raises(ConfigError, match="missing"):
        read_manifest(vdir)
    (vdir / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable manifest"):
        read_manifest(vdir)
    (vdir / "manifest.json").write_text(json.dumps({"name": "m"}))
    with pytest.raises(ConfigError, match="lacks the key 'version'"):
        read_manifest(vdir)


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOGLINE_MODELS", raising=False)
    assert default_models_dir() == Path("models")
    monkeypatch.setenv("FOGLINE_MODELS", "/srv/models")
    assert default_models_dir() == Path("/srv/models")
