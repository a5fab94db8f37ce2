"""The bundle manifest: its schema (what `edgetl bundle` writes) and the check both sides run against it.

manifest.json names every file of a bundle with its size and SHA-256; the bundle's identity is the
SHA-256 of manifest.json itself. The package verifies a bundle before reusing it, the device before it
builds or benchmarks anything.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .forms import U8S8, is_precision, serving_form
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
    problem = schema_problem(manifest)
    if problem:
        raise ManifestError(f"{path}: malformed manifest: {problem} (re-make the bundle with `edgetl bundle`)")
    return manifest


def schema_problem(manifest: dict[str, Any]) -> str | None:
    """The first entry of a manifest that is not what `edgetl bundle` writes, or None. Every file the device
    opens (the models, the data) must be a hashed entry of `files`, inside the bundle, so verify() covers it."""
    for rel, entry in manifest["files"].items():
        if not (isinstance(rel, str) and isinstance(entry, dict) and isinstance(entry.get("size"), int)
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
            return f"files[{rel!r}] is not {{'size': int, 'sha256': hex}}"
        try:
            inside(".", rel)
        except ManifestError as e:
            return str(e)
    models, data = manifest["models"], manifest["data"]
    if not isinstance(models, dict) or not models:
        return "models is not a table of precision -> file"
    if not isinstance(data, dict):
        return "data is not a table"
    opened = [(f"models[{k!r}]", v) for k, v in models.items()] + [(f"data[{k!r}]", data.get(k))
                                                                  for k in ("inputs", "labels")]
    for where, rel in opened:
        if not isinstance(rel, str) or rel not in manifest["files"]:
            return f"{where} = {rel!r} is not one of the bundle's hashed files"
    io = manifest["io"]
    if not (isinstance(io, dict) and isinstance(io.get("input"), dict) and isinstance(io["input"].get("shape"), list)):
        return "io.input.shape is missing"
    return None


def unlisted(bundle: str | os.PathLike, manifest: dict[str, Any], own: tuple = ("engines/",)) -> list[str]:
    """Files and links in the bundle that the manifest does not list (symlinks shown with their target),
    apart from what the device itself writes there (`own`: engines and their sidecars)."""
    root = str(bundle)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(filenames) + sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel == MANIFEST or rel in manifest["files"] or rel.startswith(own) or "__pycache__" in rel.split("/"):
                continue
            found.append(f"{rel} -> {os.readlink(path)}" if os.path.islink(path) else rel)
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
    return sorted(found)


def file_problems(bundle: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """What differs between the bundle's files and its manifest (empty when every size and SHA-256 matches)."""
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        path = inside(bundle, rel)
        real, top = os.path.realpath(path), os.path.realpath(str(bundle))
        if os.path.commonpath([real, top]) != top:  # a link (of the file or a folder above it) out of the bundle
            problems.append(f"{rel} leads outside the bundle (a symbolic link to {real})")
        elif not os.path.isfile(path):
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


def model_file(manifest: dict[str, Any], precision: str, device: str = "cuda") -> str:
    """The bundle's ONNX file for a precision on a runtime device (forms.serving_form: on "cpu" the int8 CPU
    (U8S8) form where the bundle has one)."""
    models = manifest["models"]
    if is_precision(precision) and serving_form(precision, device, {U8S8.name: U8S8.manifest_key in models}) is U8S8:
        return models[U8S8.manifest_key]
    if precision not in models:
        raise ManifestError(f"this bundle has no {precision} model (it holds {', '.join(sorted(models))})")
    return models[precision]
