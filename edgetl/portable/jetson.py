"""Facts a Jetson reports about itself (L4T release; power mode and clocks are read by the device side)."""

from __future__ import annotations

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
