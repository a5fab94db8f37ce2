"""Which rows a bench runs, and why the others are skipped: every question goes to the backend's class (where it
runs, whether it is available here, which precisions it has, which model file of the run it loads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

from edgetl.errors import EdgetlError, FormMismatch, ModelError
from edgetl.rundir import RunDir

if TYPE_CHECKING:
    from edgetl.bench.settings import BenchSettings

DURATION_STEPS = 50  # progress steps of a batch size timed for a duration, not a count of calls


class PlannedRow(NamedTuple):
    backend: str
    precision: str
    model_file: Path
    device: str


def plan_rows(run: RunDir, backends: Sequence[str], precisions: Sequence[str] | None,
              device: str) -> tuple[list[PlannedRow], list[dict[str, Any]]]:
    """(backend, precision, model_file, device) to run, and what is skipped with its reason.

    precisions=None means every model file the run has, of the precisions each backend benches by default.
    """
    from edgetl.runtime import backend_class

    todo: list[PlannedRow] = []
    skipped: list[dict[str, Any]] = []
    for name in backends:
        cls = backend_class(name)
        dev = cls.device_for(device)
        reason = cls.why_not_here(dev)
        if reason:
            skipped.append(skip_entry(name, None, reason))
            continue
        implicit = precisions is None
        for precision in cls.bench_precisions(dev) if implicit else precisions:
            reason = cls.unsupported(precision, dev)
            if reason:
                skipped.append(skip_entry(name, precision, reason))
                continue
            try:
                path = cls.model_file(run, precision, dev)
            except EdgetlError as e:
                if not implicit:  # asked for by name: say why it is missing; otherwise it just is not there
                    skipped.append(skip_entry(name, precision, str(e)))
                continue
            refuse_other_form(Path(path), precision)
            todo.append(PlannedRow(name, precision, Path(path), dev))
    return todo, skipped


@dataclass
class BenchPlan:
    """What a bench measures before it loads anything: each row in `rows` at each of `batch_sizes` (that its
    model allows), and what it refuses now, with the reason, in `skipped`."""

    rows: list[PlannedRow]
    skipped: list[dict[str, Any]]
    batch_sizes: list[int]
    iterations: int | None  # timed calls per batch size; None: timed for a duration

    @property
    def steps_per_batch(self) -> int:
        return (self.iterations or DURATION_STEPS) + 1  # the timed calls, then the row

    @property
    def steps_per_row(self) -> int:
        return len(self.batch_sizes) * self.steps_per_batch + 1  # + loading the model and its top-1

    @property
    def total_steps(self) -> int:
        return max(1, len(self.rows) * self.steps_per_row)


def plan_bench(run: RunDir, cfg: BenchSettings) -> BenchPlan:
    todo, skipped = plan_rows(run, cfg.backends, cfg.precisions, cfg.device)
    return BenchPlan(todo, skipped, list(cfg.batch_sizes), cfg.timed_iterations)


def fixed_batch_refusal(batch_size: int, fixed_batch: int | None, model_file: str) -> str | None:
    """Why `batch_size` is not timed on a model with a fixed batch (a padded batch would time the fixed batch,
    not `batch_size`); None when it is."""
    if fixed_batch is not None and batch_size != fixed_batch:
        return f"batch {batch_size}: {model_file} has a fixed batch of {fixed_batch}"
    return None


def refuse_other_form(path: Path, precision: str) -> None:
    """A graph whose metadata (or name) says another precision would be timed under the wrong label: refused
    in one line (FormMismatch). An unreadable file is left to its backend, which says so on its row."""
    if path.suffix != ".onnx":
        return
    from edgetl.card import check_form

    try:
        check_form(path, precision)
    except FormMismatch:
        raise
    except ModelError:
        pass


def skip_entry(backend: str | None, precision: str | None, reason: str, **more: Any) -> dict[str, Any]:
    return {"backend": backend, "precision": precision, **more, "reason": reason}


def skipped_lines(skipped: Iterable[dict]) -> list[str]:
    return [f"skipped {' '.join(filter(None, (s.get('backend'), s.get('precision')))) or '*'}: {s['reason']}"
            for s in skipped]
