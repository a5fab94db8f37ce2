"""`edgetl bundle`, `deploy` and `triton`: what leaves this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import typer

from edgetl.choices import FLEET_JOBS_MAX, DeployBackend, DeployDevice, EnginePrecision, TritonKind
from edgetl.cli.command import stage
from edgetl.cli.options import BATCH_SIZE, CONFIG, DEVICE, ITERATIONS, MAX_IMAGES, PRECISION, WARMUP
from edgetl.cli.options import run_argument, setting
from edgetl.rundir import lock_run  # light: names and the run lock only


@stage("bundle", "edgetl.ship.bundle:BundleSettings")
def bundle_cmd(
    load: Callable,
    run: Path = run_argument(),
    config: Optional[Path] = CONFIG,
    precision: Optional[EnginePrecision] = PRECISION,
    out: Optional[Path] = setting("--out", "-o", dir_okay=False),
    tar: Optional[bool] = setting("--tar/--no-tar"),
    max_images: Optional[int] = MAX_IMAGES,
) -> None:
    """Pack what a device needs: ONNX, model card, preprocessed eval images, entry point, SHA-256 manifest."""
    from edgetl.ship.bundle import bundle
    from edgetl.presentation.bundle import render_bundle
    from edgetl.presentation.events import RichEvents

    cfg = load()
    with lock_run(run, "bundle"), RichEvents() as events:
        result = bundle(run, cfg, events)
    render_bundle(result)


@stage("deploy", "edgetl.ship.deploy:DeploySettings")
def deploy_cmd(
    load: Callable,
    ctx: typer.Context,
    run: Path = run_argument(),
    hosts: Optional[List[str]] = setting("--host"),
    hosts_file: Optional[Path] = setting("--hosts", dir_okay=False),
    jobs: Optional[int] = setting("--jobs", min=1, max=FLEET_JOBS_MAX),
    config: Optional[Path] = CONFIG,
    precision: Optional[EnginePrecision] = PRECISION,
    bench: Optional[bool] = setting("--bench"),
    backend: Optional[DeployBackend] = setting(),
    remote_dir: Optional[str] = setting(),
    python: Optional[str] = setting(),
    port: Optional[int] = setting("--port"),
    identity: Optional[Path] = setting("--identity"),
    ssh_options: Optional[List[str]] = setting("--ssh-option"),
    batch_sizes: Optional[List[int]] = BATCH_SIZE,
    warmup: Optional[int] = WARMUP,
    iterations: Optional[int] = ITERATIONS,
    max_images: Optional[int] = MAX_IMAGES,
    device: Optional[DeployDevice] = DEVICE,
    build: Optional[bool] = setting("--build/--no-build"),
    force: Optional[bool] = setting("--force"),
) -> None:
    """Ship a run to a device (or many) over ssh, build the engine there, benchmark there, fetch the results.
    Several --host (or --hosts FILE) deploy in parallel and write RUN/fleet.json, fleet.md and fleet.png; exit
    code 4 when some devices failed (the others' results are written)."""
    from edgetl.cli.run import _typer_and_click

    cfg = load()
    if not cfg.hosts and cfg.hosts_file is None:
        usage_error = _typer_and_click("UsageError")[0]
        raise usage_error("Missing option '--host' (or --hosts FILE, or hosts: in --config)", ctx)
    _deploy(run, cfg)


def _deploy(run: Path, cfg) -> None:
    """One device: today's steps and output; several: in parallel, a table, exit code 4 when some failed."""
    from edgetl.ship.deploy import deploy
    from edgetl.errors import FleetIncomplete
    from edgetl.ship.fleet import deploy_fleet
    from edgetl.presentation.deploy import FleetEvents, render_deploy, render_fleet
    from edgetl.presentation.events import RichEvents

    if cfg.hosts_file is None and len(cfg.hosts) == 1:
        with RichEvents() as events:
            result = deploy(run, cfg, events)
        render_deploy(result, run)
        return
    with FleetEvents() as events:
        fleet = deploy_fleet(run, cfg, events)
    render_fleet(fleet)
    if fleet.failed:
        raise FleetIncomplete(f"{len(fleet.failed)} of {len(fleet.hosts)} devices failed: "
                              + ", ".join(h.host for h in fleet.failed),
                              f"their reasons are above and in {run / 'fleet.md'}; the others' results are written")


@stage("triton", "edgetl.ship.triton:TritonSettings")
def triton_cmd(
    load: Callable,
    run: Path = run_argument(),
    config: Optional[Path] = CONFIG,
    out: Optional[Path] = setting("--out", "-o", file_okay=False),
    precision: Optional[EnginePrecision] = PRECISION,
    max_batch: Optional[int] = setting(),
    name: Optional[str] = setting(),
    kind: Optional[TritonKind] = setting(),
    queue_delay_us: Optional[int] = setting(),
) -> None:
    """Write a Triton Inference Server model repository (ONNX model, and the TensorRT engine where one was built)."""
    from edgetl.presentation.events import RichEvents
    from edgetl.presentation.triton import render_triton
    from edgetl.ship.triton import triton

    cfg = load()
    with lock_run(run, "triton"), RichEvents() as events:
        result = triton(run, cfg, events)
    render_triton(result)
