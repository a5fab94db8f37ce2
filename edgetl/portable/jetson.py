"""Facts a Jetson reports about itself: L4T release, board model, power mode, clocks (MHz). Read by `edgetl
bench` (system_info) and by the device entry point, so both record them alike."""

from __future__ import annotations

import os
import re

L4T_RELEASE_FILE = "/etc/nv_tegra_release"


def parse_l4t(text: str) -> str | None:
    """'# R36 (release), REVISION: 3.0, GCID: ...' -> 'R36.3.0' (the L4T release a JetPack ships)."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{m.group(1)}.{m.group(2)}" if m else None


def l4t_release(path: str = L4T_RELEASE_FILE) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_l4t(f.read())
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip("\x00 \n")
    except OSError:
        return None


def parse_power_mode(text: str) -> dict | None:
    """`nvpmodel -q` output ('NV Power Mode: MAXN' then the mode id) -> {'name': 'MAXN', 'id': 0}."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text or "")
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    mode_id = int(lines[-1]) if lines and lines[-1].isdigit() else None
    if m is None and mode_id is None:
        return None
    return {"name": m.group(1) if m else None, "id": mode_id}


def power_mode() -> dict | None:
    """The nvpmodel power mode, or None where nvpmodel is absent (not a Jetson) or fails."""
    import shutil
    import subprocess

    if shutil.which("nvpmodel") is None:
        return None
    try:
        res = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_power_mode(res.stdout) if res.returncode == 0 else None


# devfreq node names of Jetson GPUs (Xavier gv11b, Orin ga10b; Nano/TX2 57000000.gpu / 17000000.gp10b)
_GPU_DEVFREQ = re.compile(r"gpu|gv11b|ga10b|gp10b|gm20b", re.IGNORECASE)


def clocks(sysfs: str = "/sys") -> dict | None:
    """Current clocks in MHz (one decimal), where the kernel lets us read them: gpu_mhz (devfreq, Hz),
    cpu0_mhz (cpufreq, kHz), emc_mhz (bpmp debugfs, Hz; root only). Absent ones are left out; None when
    none is readable. MHz is the one unit edgetl records clocks in, on the device and in `edgetl bench`."""
    found = {}
    devfreq = os.path.join(sysfs, "class", "devfreq")
    for name in sorted(os.listdir(devfreq)) if os.path.isdir(devfreq) else ():
        if _GPU_DEVFREQ.search(name):
            v = _read(os.path.join(devfreq, name, "cur_freq"))
            if v and v.isdigit():
                found["gpu_mhz"] = round(int(v) / 1e6, 1)
                break
    v = _read(os.path.join(sysfs, "devices", "system", "cpu", "cpu0", "cpufreq", "scaling_cur_freq"))
    if v and v.isdigit():
        found["cpu0_mhz"] = round(int(v) / 1e3, 1)
    v = _read(os.path.join(sysfs, "kernel", "debug", "bpmp", "debug", "clk", "emc", "rate"))
    if v and v.isdigit():
        found["emc_mhz"] = round(int(v) / 1e6, 1)
    return found or None


def board_model() -> str | None:
    return _read("/proc/device-tree/model") or None
