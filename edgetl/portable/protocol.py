"""What `edgetl deploy` asks the device script and what it answers: typed records on both sides of the wire.

A request is a command line (`argv()`, parsed back by `parse()` on the device: `edgetl_device.py` stays
usable by hand); a reply is the JSON document the command prints (`to_dict()` / `from_dict()`). The facts
and inventory replies stay plain dicts: they are open-ended reports stored as they came.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

BACKENDS = ("tensorrt", "onnxruntime")
ORT_DEVICES = ("auto", "cpu", "cuda")


class RequestError(ValueError):
    """A request the device refuses before running anything (one line)."""


@dataclass(frozen=True)
class Verify:
    """Check every bundle file's size and SHA-256."""

    dir: str

    def argv(self) -> List[str]:
        return ["verify", "--dir", self.dir]


@dataclass(frozen=True)
class Facts:
    """Device model, JetPack/L4T, TensorRT, numpy, power mode, clocks."""

    space: Optional[str] = None  # also report the free bytes where this path is (or would be)

    def argv(self) -> List[str]:
        return ["facts"] + (["--space", self.space] if self.space is not None else [])


@dataclass(frozen=True)
class Inventory:
    """Size and SHA-256 of every file under each dir."""

    dirs: Tuple[str, ...]

    def argv(self) -> List[str]:
        return ["inventory", *self.dirs]


@dataclass(frozen=True)
class Build:
    """Build the TensorRT engine on the device (reused when unchanged)."""

    dir: str
    precision: Optional[str] = None  # None: the bundle's own
    max_batch: int = 8
    force: bool = False

    def argv(self) -> List[str]:
        return (["build", "--dir", self.dir] + (["--precision", self.precision] if self.precision else [])
                + ["--max-batch", str(self.max_batch)] + (["--force"] if self.force else []))


@dataclass(frozen=True)
class Bench:
    """Accuracy and latency on the bundle's images."""

    dir: str
    backend: str = "tensorrt"
    precision: Optional[str] = None
    device: str = "auto"  # onnxruntime only
    batch_sizes: Tuple[int, ...] = (1, 8)
    warmup: int = 10
    iterations: int = 100
    out: Optional[str] = None  # write bench.json here (relative paths: inside the bundle)

    def argv(self) -> List[str]:
        return (["bench", "--dir", self.dir, "--backend", self.backend]
                + (["--precision", self.precision] if self.precision else [])
                + ["--device", self.device, "--batch-sizes", ",".join(map(str, self.batch_sizes)),
                   "--warmup", str(self.warmup), "--iterations", str(self.iterations)]
                + (["--out", self.out] if self.out else []))

    def check(self) -> "Bench":
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.iterations < 1 or self.warmup < 0:
            raise RequestError("--batch-sizes must be >= 1, --iterations >= 1, --warmup >= 0")
        return self


def _parser(here: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetl_device.py", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help=Verify.__doc__)
    p.add_argument("--dir", default=here)
    p = sub.add_parser("facts", help=Facts.__doc__)
    p.add_argument("--space", default=None, help="also report the free bytes where this path is (or would be)")
    p = sub.add_parser("inventory", help=Inventory.__doc__)
    p.add_argument("dirs", nargs="+")
    p = sub.add_parser("build", help=Build.__doc__)
    p.add_argument("--dir", default=here)
    p.add_argument("--precision", default=None)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("bench", help=Bench.__doc__)
    p.add_argument("--dir", default=here)
    p.add_argument("--backend", default="tensorrt", choices=BACKENDS)
    p.add_argument("--precision", default=None)
    p.add_argument("--device", default="auto", choices=ORT_DEVICES, help="onnxruntime only")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--out", default=None, help="write bench.json here (relative paths: inside the bundle)")
    return parser


def parse(argv: Optional[List[str]], here: str = ".", description: str = "edgetl's device side"):
    """The request a command line makes (argparse exits 2 on a malformed one); RequestError for bad values."""
    args = _parser(here, description).parse_args(argv)
    if args.command == "verify":
        return Verify(args.dir)
    if args.command == "facts":
        return Facts(args.space)
    if args.command == "inventory":
        return Inventory(tuple(args.dirs))
    if args.command == "build":
        return Build(args.dir, args.precision, args.max_batch, args.force)
    try:
        sizes = tuple(int(s) for s in args.batch_sizes.split(",") if s.strip())
    except ValueError:
        raise RequestError(f"--batch-sizes {args.batch_sizes!r}: give integers, e.g. 1,8") from None
    return Bench(args.dir, args.backend, args.precision, args.device, sizes, args.warmup, args.iterations, args.out)


def command_of(request) -> str:
    return request.argv()[0]


# -- replies -------------------------------------------------------------------------------------------

class _Reply:
    def to_dict(self) -> Dict[str, Any]:
        """The JSON document; optional keys left out when unset, as the device has always printed them."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in self._optional}

    @classmethod
    def from_dict(cls, doc: Dict[str, Any]):
        names = {f.name for f in fields(cls)}
        missing = [n for n in names if n not in doc and n not in cls._optional]
        if missing:
            raise ValueError(f"{cls.__name__}: the device's reply has no {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True)
class VerifyReply(_Reply):
    ok: bool
    bundle: str
    files: int
    bundle_sha256: str
    unlisted: List[str]
    _optional = ()


@dataclass(frozen=True)
class BuildReply(_Reply):
    engine: str  # the plan's path as the device sees it
    sidecar: str
    reused: bool
    builder: str  # 'edgetl build' or 'trtexec'
    reused_from: Optional[str] = None  # another bundle's engine, copied here
    _optional = ("reused_from",)


@dataclass(frozen=True)
class BenchReply(_Reply):
    rows: List[Dict[str, Any]]  # portable.rows.ROW_KEYS each
    system: Dict[str, Any]  # the device's facts
    reference: Dict[str, Any]
    bundle: Dict[str, Any]
    engine: Optional[Dict[str, Any]]  # a BuildReply's dict (tensorrt)
    written: Optional[str] = None
    _optional = ("written",)
