"""What a fleet deploy found (RUN/fleet.json): one record per device and per measurement. Its own module so that
the fleet (which makes it) and the fleet's report (which reads it) do not import each other."""

from __future__ import annotations

from typing import Dict, List, Optional

from pydantic import BaseModel, ConfigDict

from edgetl.stage import Result


class FleetHost(BaseModel):
    """One device of the fleet: where its results are, what it reported, how it ended."""

    model_config = ConfigDict(extra="forbid")

    host: str  # the destination as edgetl names it: user@host, user@host:2222
    device_dir: Optional[str]  # devices/<user@host>[_port], relative to the run; None when it failed before
    board: Optional[str]  # the device's model (Jetson) or GPU or machine, as it reported itself
    power_mode: Optional[str]  # nvpmodel's mode name, where the device has one (Jetson)
    clocks: Optional[Dict[str, float]]  # gpu_mhz, cpu0_mhz, emc_mhz where readable
    started: float  # seconds since the epoch
    finished: float
    error: Optional[str]  # None when the device deployed (and benchmarked) fine; else the one-line reason
    hint: Optional[str]


class FleetRow(BaseModel):
    """One measurement: device x precision x batch size (the device's bench row, trimmed to what compares)."""

    model_config = ConfigDict(extra="forbid")

    host: str  # FleetHost.host
    backend: str
    precision: str
    batch_size: int
    device: str  # cpu / cuda: where on the device it ran
    model_file: str
    latency_ms: Dict[str, float]  # mean, p50, p90, p99, min, max, std of one call
    throughput_ips: float
    top1: Optional[float]
    top1_drop: Optional[float]  # fp32 PyTorch top-1 on the bundle's images minus this row's


class FleetResult(Result):
    """RUN/fleet.json."""

    run: str
    created: str
    precision: str
    backend: str
    bundle_sha256: str
    jobs: int
    hosts: List[FleetHost]  # in the order they were listed
    rows: List[FleetRow]

    @property
    def failed(self) -> List[FleetHost]:
        return [h for h in self.hosts if h.error is not None]
