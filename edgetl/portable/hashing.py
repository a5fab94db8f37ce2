"""SHA-256 of files: the identity of every artifact edgetl records and checks."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def inventory(dirs) -> dict:
    """{dir: {"exists": bool, "files": {relpath: {size, sha256}}}}: what a device already holds (deploy resumes
    an upload from it); symlinks are not followed."""
    out = {}
    for d in dirs:
        files = {}
        if os.path.isdir(d):
            for dirpath, dirnames, filenames in os.walk(d):
                dirnames.sort()
                for name in sorted(filenames):
                    p = os.path.join(dirpath, name)
                    if os.path.isfile(p) and not os.path.islink(p):
                        rel = os.path.relpath(p, d).replace(os.sep, "/")
                        files[rel] = {"size": os.path.getsize(p), "sha256": sha256_file(p)}
        out[d] = {"exists": os.path.isdir(d), "files": files}
    return out
