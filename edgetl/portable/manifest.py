"""The bundle manifest: its schema (what `edgetl bundle` writes) and the check both sides run against it.

manifest.json names every file of a bundle with its size and SHA-256; the bundle's identity is the
SHA-256 of manifest.json itself. The package verifies a bundle before reusing it, the device before it
builds or benchmarks anything.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .hashing import sha256_file

BUNDLE_FORMAT = "edgetl-bundle/2"
MANIFEST = "manifest.json"
ENTRY_POINT = "edgetl_device.py"
PORTABLE_DIR = "portable"  # the stdlib + numpy part of edgetl, shipped next to the entry point
# Keys every manifest has (manifest["files"][rel] = {"sha256", "size"}).
MANIFEST_KEYS = ("format", "edgetl_version", "run", "precision", "models", "io", "card", "data", "reference",
                 "entry_point", "source", "files")


class ManifestError(ValueError):
    """A bundle that is not one, or whose files differ from its manifest (one line, for the user)."""


def inside(bundle: str | os.PathLike, rel: str) -> str:
    """BUNDLE/rel, refusing a name that would point outside the bundle (absolute, or with '..')."""
    parts = str(rel).replace("\\", "/").split("/")
    if str(rel).startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ManifestError(f"manifest names a file outside the bundle: {rel!r}")
    return os.path.join(str(bundle), *parts)


def load_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    path = os.path.join(str(bundle), MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (is {bundle} an edgetl bundle?)") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ManifestError(f"{path}: bundle format {found!r}, this edgetl reads {BUNDLE_FORMAT} "
                            "(re-make the bundle with this edgetl)")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing or not isinstance(manifest["files"], dict):
        raise ManifestError(f"{path}: manifest lacks {', '.join(missing) or 'a files table'}")
    return manifest


def file_problems(bundle: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """What differs between the bundle's files and its manifest (empty when every size and SHA-256 matches)."""
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        path = inside(bundle, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel} is missing")
        elif os.path.getsize(path) != entry["size"]:
            problems.append(f"{rel} has {os.path.getsize(path)} bytes, the manifest says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel} sha256 differs from the manifest (modified after bundling?)")
    return problems


def verify(bundle: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a bundle whose every file checks out; ManifestError naming the first that does not."""
    manifest = load_manifest(bundle)
    problems = file_problems(bundle, manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ManifestError(f"bundle {bundle} failed verification: {problems[0]}{more}")
    return manifest


def model_file(manifest: dict[str, Any], precision: str, target: str = "tensorrt") -> str:
    """The bundle's ONNX file for a precision; target 'cpu' picks the int8 CPU (U8S8) form where it has one."""
    models = manifest["models"]
    if precision == "int8" and target == "cpu" and "int8_cpu" in models:
        return models["int8_cpu"]
    if precision not in models:
        raise ManifestError(f"this bundle has no {precision} model (it holds {', '.join(sorted(models))})")
    return models[precision]
