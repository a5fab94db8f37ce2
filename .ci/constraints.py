#!/usr/bin/env python3
"""Write constraints.txt: the exact package set the suite last passed with, for the README's commands and CI.

Why: `pip install -e ".[dev]"` resolves against whatever PyPI serves today, so a release made tomorrow can break
a command that passed today (torch 2.14's cuda-bindings 13 next to cuda-python 12 did). The README's commands
and .ci/run install with `-c constraints.txt`; pyproject.toml keeps open ranges, so `pip install edgetl`
still gets newer compatible releases.

Refresh on purpose, never silently (README, "Keeping the commands reproducible"):

    python3 -m venv /tmp/latest && . /tmp/latest/bin/activate
    pip install -U -e . && pip install -U -e ".[dev]" && python -m pytest -q     # today's releases, unconstrained
    python .ci/constraints.py /tmp/latest > constraints.txt                        # only if that passed
    git diff constraints.txt                                                       # read what moved, then commit

The venv's own Python (CI's, 3.11 here) gets its frozen set; Python 3.10 (JetPack 6) gets the versions pip
resolves for it from the same requirements (a dry run that downloads no wheel), marked `python_version < "3.11"`
wherever they differ, since some releases (numpy 2.3+) left 3.10 behind.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD = "3.10"
# Built from an sdist (no wheel metadata), which a dry run for another Python cannot do: the same version is
# assumed there (it is a pure wrapper around its -libs/-bindings wheels).
SDIST_ONLY = ("tensorrt-rtx-cu12",)


def norm(name: str) -> str:
    return name.lower().replace("_", "-")


def frozen(venv: Path) -> dict[str, str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line and not line.startswith(("-e", "#")):
            name, version = line.split("==", 1)
            pins[norm(name)] = version.strip()
    return pins


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = (list(project["dependencies"]) + [r for r in extras["dev"] if not r.startswith("edgetl[")] + extras["rtx"]
            + extras["qat"])
    return [r for r in reqs if not norm(r).startswith(SDIST_ONLY)]


def resolved_for(python: str, venv: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "-q", "--ignore-installed",
                        "--report", str(report), "--python-version", python, "--only-binary=:all:",
                        "--target", str(Path(tmp) / "t"), *requirements()], check=True)
        items = json.loads(report.read_text())["install"]
    return {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


def main(venv: str) -> None:
    venv_path = Path(venv)
    new = frozen(venv_path)
    old = resolved_for(OLD, venv_path)
    for name in SDIST_ONLY:
        if name in new:
            old.setdefault(name, new[name])
    py = subprocess.run([str(venv_path / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
                        capture_output=True, text=True, check=True).stdout.strip()
    lines = [f"# The package set the test suite last passed with: Python {py} on {platform.machine()}, "
             f"{datetime.date.today().isoformat()}.",
             f"# Lines marked python_version < \"{OLD.split('.')[0]}.{int(OLD.split('.')[1]) + 1}\" are what pip "
             f"resolves for Python {OLD} (JetPack 6) from the same requirements.",
             "# Written by .ci/constraints.py; refresh on purpose (README: Keeping the commands reproducible).", ""]
    newer = f'python_version >= "{OLD.split(".")[0]}.{int(OLD.split(".")[1]) + 1}"'
    older = f'python_version < "{OLD.split(".")[0]}.{int(OLD.split(".")[1]) + 1}"'
    for name in sorted(set(new) | set(old)):
        if new.get(name) == old.get(name):
            lines.append(f"{name}=={new[name]}")
            continue
        if name in new:
            lines.append(f"{name}=={new[name]}; {newer}")
        if name in old:
            lines.append(f"{name}=={old[name]}; {older}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python .ci/constraints.py VENV > constraints.txt")
    main(sys.argv[1])
