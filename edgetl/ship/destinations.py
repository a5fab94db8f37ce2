"""Where a deploy goes: ssh destinations as the user writes them, on the command line or in a hosts file.

One grammar for both:

    [user@]host[:port]          nvidia@orin.local, orin, nvidia@192.168.1.20:2222
    [user@][ipv6][:port]        nvidia@[fe80::1%eth0]:2222 (brackets when a port follows an IPv6 address)
    ssh://[user@]host[:port]    the URI form ssh itself takes
    a Host alias                from ~/.ssh/config (its port, user and key come from there)

A hosts file holds one destination a line; `#` starts a comment, blank lines are skipped. The same device
listed twice (same user, host and port) is deployed once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import DeployError
from edgetl.ship.transport import display_name, validate_host

_PORT = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True)
class Destination:
    target: str  # what ssh gets as its destination: [user@]host, no port, no brackets
    port: int | None  # ssh -p; None: ssh's own (22 or ~/.ssh/config)

    @property
    def label(self) -> str:
        """How edgetl names the device in messages and tables: user@host, user@host:2222, user@[fe80::1]:2222."""
        return display_name(self.target, self.port)


def parse_destination(text: str, default_port: int | None = None) -> Destination:
    """One destination (grammar in the module docstring); `default_port` applies where it names none."""
    value = validate_host(text.strip() if isinstance(text, str) else text)
    rest = value.split("://", 1)[1] if value.lower().startswith("ssh://") else value
    if not rest or "/" in rest:
        raise DeployError(f"host {text!r}: not a destination", "give [user@]host[:port] or a Host alias from ~/.ssh/config")
    who, at, name = rest.rpartition("@")
    if (at and not who) or not name:
        raise DeployError(f"host {text!r}: the user or the host name is empty", "give [user@]host[:port]")
    port_text = None
    if name.startswith("["):
        close = name.find("]")
        after = name[close + 1:] if close > 0 else None
        if after is None or (after and not after.startswith(":")):
            raise DeployError(f"host {text!r}: an address in brackets must be [address] or [address]:port")
        name, port_text = name[1:close], (after[1:] if after else None)
    elif name.count(":") == 1:  # host:port; two or more colons are a bare IPv6 address
        name, port_text = name.split(":")
    if not name:
        raise DeployError(f"host {text!r}: the host name is empty", "give [user@]host[:port]")
    port = default_port
    if port_text is not None:
        if not _PORT.match(port_text) or not 1 <= int(port_text) <= 65535:
            raise DeployError(f"host {text!r}: port {port_text!r} is not a TCP port (1-65535)")
        port = int(port_text)
    return Destination(f"{who}{at}{name}", port)


def read_hosts_file(path: str | os.PathLike) -> list[str]:
    """The destinations listed in a hosts file, in order (each checked; an error names the line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise DeployError(f"hosts_file {path}: cannot read it ({reason})",
                          "give a text file with one destination a line ([user@]host[:port])") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if len(entry.split()) > 1:
            raise DeployError(f"hosts_file {path} line {number}: {entry!r} holds more than one word",
                              "one destination a line; give a port as host:port")
        try:
            parse_destination(entry)
        except DeployError as e:
            raise DeployError(f"hosts_file {path} line {number}: {e.message}", e.hint) from None
        found.append(entry)
    if not found:
        raise DeployError(f"hosts_file {path}: lists no destination (only blank lines and comments)",
                          "one destination a line: [user@]host[:port]")
    return found


def unique_destinations(entries: list[str], default_port: int | None = None) -> tuple[list[Destination], list[str]]:
    """The destinations in order, each once, and one line per entry dropped for repeating an earlier one."""
    seen: dict[Destination, str] = {}
    repeats = []
    for entry in entries:
        dest = parse_destination(entry, default_port)
        if dest in seen:
            repeats.append(f"{entry} repeats {seen[dest]}: deployed once")
        else:
            seen[dest] = entry
    return list(seen), repeats


__all__ = ["Destination", "parse_destination", "read_hosts_file", "unique_destinations"]
