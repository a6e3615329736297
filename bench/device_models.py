"""Carry a model repository to the device machine inside its 64 MiB: pack it here, unpack it there.

    python -m bench.device_models pack .cache/test-models .gpu/packed --only-cloud minilm --only-cloud digits
    python3 -m bench.device_models unpack .gpu/packed .gpu/models

``pack`` copies every file of every ``<name>/<version>/`` directory, except that

- a weights file over ``--fp16-over`` MB (minilm's ~90 MB of FP32 weights: a TorchScript ``.pt`` or
  a safetensors file) has its FP32 tensors rounded to FP16 and stored as two byte planes, the high
  bytes (sign, exponent) xz-compressed and the low bytes as they are, everything else of the file
  (TorchScript code, other tensors) xz-compressed: ~90 MB become ~39 MB;
- a model named by ``--only-cloud`` keeps only what the cloud tier reads (manifest, ``full/``,
  tokenizer), not its ONNX files.

``unpack`` writes such a file back with FP32 tensors (their values FP16-rounded: the same shapes and
compute cost, answers within FP16 rounding of the original) and, for a version whose files changed,
rewrites the manifest's file table (sha256, bytes) for the files it now holds, so that the copy
passes its own hash checks. A benchmark run on such a copy says so in its report. ``pack`` unpacks
what it wrote into a temporary folder and compares the tensors with the original (torch, when
importable) before it returns.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import pickle
import shutil
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MAGIC = b"FOGLINE-FP16-PLANES-2\n"
PACK_INDEX = "pack.json"
SUFFIX = ".fp16"
CLOUD_ONLY = ("manifest.json", "full/", "tokenizer.json")
WEIGHT_SUFFIXES = (".safetensors", ".pt")
SMALLEST_PLANE = 1 << 16  # a storage under 64 KiB stays as it is
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


# ------------------------------------------------------------------------------------ the container


def _write_container(dest: Path, index: dict, halves: list[np.ndarray], raw: bytes) -> None:
    planes = np.concatenate(halves).view(np.uint8).reshape(-1, 2) if halves else np.zeros((0, 2), np.uint8)
    high = lzma.compress(planes[:, 1].tobytes(), preset=6)
    low = planes[:, 0].tobytes()
    packed_raw = lzma.compress(raw, preset=6)
    index = dict(index, sizes=[len(high), len(low), len(packed_raw)])
    text = json.dumps(index).encode()
    with dest.open("wb") as out:
        out.write(MAGIC + struct.pack("<Q", len(text)) + text + high + low + packed_raw)


def _read_container(src: Path) -> tuple[dict, np.ndarray, bytes]:
    """(index, the FP16 values in order, the raw bytes) of a packed file."""
    blob = src.read_bytes()
    if not blob.startswith(MAGIC):
        raise SystemExit(f"{src}: not a packed weights file")
    at = len(MAGIC)
    (size,) = struct.unpack("<Q", blob[at : at + 8])
    index = json.loads(blob[at + 8 : at + 8 + size])
    at += 8 + size
    n_high, n_low, n_raw = index["sizes"]
    high = np.frombuffer(lzma.decompress(blob[at : at + n_high]), dtype=np.uint8)
    low = np.frombuffer(blob[at + n_high : at + n_high + n_low], dtype=np.uint8)
    raw = lzma.decompress(blob[at + n_high + n_low : at + n_high + n_low + n_raw])
    halves = np.stack([low, high], axis=1).reshape(-1).view(np.float16)
    return index, halves, raw


# ------------------------------------------------------------------------------------ safetensors


def _pack_safetensors(src: Path, dest: Path) -> None:
    data = src.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    metadata = header.pop("__metadata__", {})
    body = data[8 + size :]
    entries, halves, raw = [], [], []
    for name, spec in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        lo, hi = spec["data_offsets"]
        if spec["dtype"] == "F32":
            halves.append(np.frombuffer(body[lo:hi], dtype=np.float32).astype(np.float16))
            entries.append({"name": name, "dtype": "F32", "shape": spec["shape"], "plane": "f16"})
        else:
            raw.append(body[lo:hi])
            entries.append({"name": name, "dtype": spec["dtype"], "shape": spec["shape"], "plane": "raw",
                            "bytes": hi - lo})  # fmt: skip
    _write_container(
        dest, {"format": "safetensors", "metadata": metadata, "tensors": entries}, halves, b"".join(raw)
    )


def _unpack_safetensors(index: dict, halves: np.ndarray, raw: bytes, dest: Path) -> None:
    header: dict = {"__metadata__": index["metadata"]} if index["metadata"] else {}
    blobs, offset, h, r = [], 0, 0, 0
    for entry in index["tensors"]:
        if entry["plane"] == "f16":
            count = int(np.prod(entry["shape"], dtype=np.int64))
            blob = halves[h : h + count].astype(np.float32).tobytes()
            h += count
        else:
            blob = raw[r : r + entry["bytes"]]
            r += entry["bytes"]
        header[entry["name"]] = {"dtype": entry["dtype"], "shape": entry["shape"],
                                 "data_offsets": [offset, offset + len(blob)]}  # fmt: skip
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with dest.open("wb") as out:
        out.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# ------------------------------------------------------------------------------------ torch zip archives


class _Anything:
    """Stands for every class a torch pickle names: accepts whatever the pickle does to it."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass

    def append(self, value) -> None:
        pass

    def extend(self, values) -> None:
        pass


class _StorageTypes(pickle.Unpickler):
    """Reads a torch ``data.pkl`` (TorchScript or ``torch.save``) for its storages' types only."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.types: dict[str, str] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name.endswith("Storage"):
            return name
        return _Anything

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
            self.types[str(pid[2])] = pid[1] if isinstance(pid[1], str) else type(pid[1]).__name__
        return None


def _pack_torch_zip(src: Path, dest: Path) -> None:
    archive = zipfile.ZipFile(src)
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise SystemExit(f"{src}: not a torch archive with one data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    reader = _StorageTypes(archive.read(pickles[0]))
    reader.load()
    entries, halves, raw = [], [], []
    for info in archive.infolist():
        key = info.filename[len(prefix + "data/") :] if info.filename.startswith(prefix + "data/") else None
        if key is not None and reader.types.get(key) == "FloatStorage" and info.file_size >= SMALLEST_PLANE:
            halves.append(np.frombuffer(archive.read(info), dtype=np.float32).astype(np.float16))
            entries.append({"name": info.filename, "plane": "f16", "count": info.file_size // 4})
        else:
            blob = archive.read(info)
            raw.append(blob)
            entries.append({"name": info.filename, "plane": "raw", "bytes": len(blob)})
    _write_container(dest, {"format": "torch-zip", "entries": entries}, halves, b"".join(raw))


def _unpack_torch_zip(index: dict, halves: np.ndarray, raw: bytes, dest: Path) -> None:
    h, r = 0, 0
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as out:
        for entry in index["entries"]:
            if entry["plane"] == "f16":
                blob = halves[h : h + entry["count"]].astype(np.float32).tobytes()
                h += entry["count"]
            else:
                blob = raw[r : r + entry["bytes"]]
                r += entry["bytes"]
            out.writestr(zipfile.ZipInfo(entry["name"], date_time=(1980, 1, 1, 0, 0, 0)), blob)


# ------------------------------------------------------------------------------------ files


def pack_weights(src: Path, dest: Path) -> None:
    """``src`` (safetensors or a torch zip archive) with its FP32 tensors as FP16 byte planes in ``dest``."""
    if zipfile.is_zipfile(src):
        _pack_torch_zip(src, dest)
    else:
        _pack_safetensors(src, dest)


def unpack_weights(src: Path, dest: Path) -> None:
    """A file written by ``pack_weights`` back with FP32 tensors."""
    index, halves, raw = _read_container(src)
    if index["format"] == "torch-zip":
        _unpack_torch_zip(index, halves, raw, dest)
    else:
        _unpack_safetensors(index, halves, raw, dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _tensors(path: Path) -> dict:
    import torch

    if zipfile.is_zipfile(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    from safetensors.torch import load_file

    return load_file(str(path))


def check_weights(original: Path, restored: Path) -> str:
    """Both files hold the same tensors, FP32 ones within FP16 rounding; a line saying how close."""
    a, b = _tensors(original), _tensors(restored)
    if a.keys() != b.keys():
        raise SystemExit(f"{restored}: tensors differ from {original}'s")
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            raise SystemExit(
                f"{restored}: {name} is {y.dtype} {tuple(y.shape)}, was {x.dtype} {tuple(x.shape)}"
            )
        if x.is_floating_point():
            scale = float(x.abs().max()) or 1.0
            worst = max(worst, float((x.double() - y.double()).abs().max()) / scale)
        elif not bool((x == y).all()):
            raise SystemExit(f"{restored}: {name} changed")
    if worst > 1e-3:
        raise SystemExit(f"{restored}: off by {worst:.2e} of a tensor's largest value (FP16 gives < 1e-3)")
    return f"{len(a)} tensors, FP32 ones within {worst:.1e} of their largest value"


def pack(root: Path, out: Path, fp16_over_mb: float, only_cloud: list[str], check: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    changed: dict[str, dict[str, list[str]]] = {}
    for manifest in sorted(root.glob("*/*/manifest.json")):
        version_dir = manifest.parent
        rel_dir = version_dir.relative_to(root).as_posix()
        record: dict[str, list[str]] = {"fp16": [], "dropped": []}
        for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(version_dir).as_posix()
            if version_dir.parent.name in only_cloud and not rel.startswith(CLOUD_ONLY):
                record["dropped"].append(rel)
                continue
            target = out / rel_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix in WEIGHT_SUFFIXES and path.stat().st_size > fp16_over_mb * 1e6:
                packed = target.with_name(target.name + SUFFIX)
                pack_weights(path, packed)
                record["fp16"].append(rel)
                if check:
                    with tempfile.TemporaryDirectory() as tmp:
                        restored = Path(tmp) / path.name
                        unpack_weights(packed, restored)
                        print(f"{rel_dir}/{rel}: {check_weights(path, restored)}")
            else:
                shutil.copyfile(path, target)
        if record["fp16"] or record["dropped"]:
            changed[rel_dir] = record
        print(f"{rel_dir}: FP16 {record['fp16'] or '-'}, left out {record['dropped'] or '-'}")
    (out / PACK_INDEX).write_text(json.dumps(changed, indent=2) + "\n")


def unpack(packed: Path, out: Path) -> None:
    changed = json.loads((packed / PACK_INDEX).read_text())
    for path in sorted(p for p in packed.rglob("*") if p.is_file() and p.name != PACK_INDEX):
        target = out / path.relative_to(packed)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(SUFFIX) and path.name[: -len(SUFFIX)].endswith(WEIGHT_SUFFIXES):
            unpack_weights(path, target.with_name(path.name[: -len(SUFFIX)]))
        else:
            shutil.copyfile(path, target)
    for rel_dir, record in changed.items():
        version_dir = out / rel_dir
        manifest = json.loads((version_dir / "manifest.json").read_text())
        files = {}
        for path in sorted(p for p in version_dir.rglob("*") if p.is_file() and p.name != "manifest.json"):
            files[path.relative_to(version_dir).as_posix()] = {
                "sha256": _sha256(path),
                "bytes": path.stat().st_size,
            }
        manifest["files"] = files
        (version_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        print(f"{rel_dir}: FP32 from FP16 {record['fp16'] or '-'}, not carried {record['dropped'] or '-'}; "
              "manifest file table rewritten")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.device_models", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pack", help="a model repository, smaller")
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--fp16-over", type=float, default=8.0, metavar="MB", help="FP16 for weights over MB")
    p.add_argument("--only-cloud", action="append", default=[], metavar="NAME",
                   help="keep only the cloud's files of this model")  # fmt: skip
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the round-trip check")
    u = sub.add_parser("unpack", help="a packed repository back as FP32")
    u.add_argument("packed", type=Path)
    u.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.action == "pack":
        pack(args.root, args.out, args.fp16_over, args.only_cloud, args.check)
    else:
        unpack(args.packed, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
