"""Several training processes under torchrun: one process group, DistributedDataParallel, and the few collectives
finetune needs (agreeing on a step's outcome, summing statistics, gathering validation logits).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and where to rendezvous). Without them, or with WORLD_SIZE 1,
`World` is a single process and every method here is a no-op, so a one-process run computes what it always did.
Only rank 0 writes the run directory and reports progress; the others train and stay silent.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

from edgetl.errors import EdgetlError, first_line

T = TypeVar("T")


class StoppedByPeer(EdgetlError):
    """Another process of the run failed a step that every process takes together, and reports it itself: this
    process stops without a message of its own (the CLI prints nothing for it)."""


class PeerLost(EdgetlError):
    """A collective failed: another process died or stopped answering within dist_timeout."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls) -> "World":
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise EdgetlError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them)") from None
        return cls(rank=rank, local_rank=local, size=max(size, 1))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size}"

    # --- the process group ------------------------------------------------------------------------------------
    def device(self, setting: str) -> torch.device:
        """The device of this process: under torchrun, CUDA means the GPU of this process's LOCAL_RANK."""
        if setting == "auto":
            setting = "cuda" if torch.cuda.is_available() else "cpu"
        if setting.startswith("cuda") and not torch.cuda.is_available():
            raise EdgetlError(f"device '{setting}': no CUDA device is visible here", "use device cpu or auto")
        if not self.distributed or not setting.startswith("cuda"):
            return torch.device(setting)
        if setting != "cuda":
            raise EdgetlError(f"device '{setting}': under torchrun every process takes the GPU of its LOCAL_RANK",
                              "use device cuda or auto (CUDA_VISIBLE_DEVICES picks the GPUs)")
        if self.local_rank >= torch.cuda.device_count():
            raise EdgetlError(f"{self.describe()}: LOCAL_RANK {self.local_rank} but {torch.cuda.device_count()} "
                              "GPU(s) visible", "start at most as many processes per node as it has GPUs")
        return torch.device("cuda", self.local_rank)

    @contextmanager
    def group(self, device: torch.device, backend: str, timeout_s: float) -> Iterator[None]:
        """The process group for the duration of a run (nothing in one process)."""
        if not self.distributed:
            yield
            return
        import torch.distributed as dist

        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise EdgetlError("dist_backend 'nccl': needs CUDA devices", "use dist_backend gloo on the CPU")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:  # rendezvous failures come as DistNetworkError/RuntimeError/ValueError
            raise EdgetlError(f"{self.describe()}: could not join the process group ({first_line(e)})",
                              "check torchrun's rendezvous settings (--rdzv-endpoint / MASTER_ADDR, ports)") from None
        try:
            yield
        except BaseException:
            # No barrier on a failure: a process that failed must not wait for the others.
            dist.destroy_process_group()
            raise
        # A finished process waits for the others before tearing the group down: one that left while rank 0 was
        # still writing the run was once aborted by gloo ("terminate called without an active exception") under load.
        try:
            self.barrier()
        finally:
            dist.destroy_process_group()

    # --- collectives ----------------------------------------------------------------------------------------
    def agree(self, step: Callable[[], T], main_only: bool = False) -> T:
        """Run `step` (on rank 0 alone with `main_only`, its value then sent to every process) and make its outcome
        common: if it failed anywhere, the lowest failing rank raises its own error and every other process
        raises StoppedByPeer, so a bad setting or file is reported once, not once per process."""
        if not self.distributed:
            return step()
        import torch.distributed as dist

        value, error, failure = None, None, None
        if self.is_main or not main_only:
            try:
                value = step()
            except EdgetlError as e:
                error, failure = e, (self.rank, e.message)
        outcomes: list[Any] = [None] * self.size
        with self.collective():
            if main_only:
                box = [(failure, value)]
                dist.broadcast_object_list(box, src=0)
                outcomes = [box[0][0]]
                value = box[0][1]
            else:
                dist.all_gather_object(outcomes, failure)
        failed = [o for o in outcomes if o is not None]
        if failed:
            rank, message = min(failed)
            if rank == self.rank and error is not None:
                raise error
            raise StoppedByPeer(f"rank {rank} stopped: {message}")
        return value  # type: ignore[return-value]

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.distributed:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        with self.collective():
            dist.all_reduce(t)
        return t.tolist()

    def gather_rows(self, logits: torch.Tensor, indices: torch.Tensor, total: int) -> tuple[np.ndarray, np.ndarray]:
        """Every process's validation logits, one row per image of the split in index order. DistributedSampler
        gives each process the same count by repeating the first images; a repeat is dropped here, so no image
        counts twice and none is missing (checked)."""
        if not self.distributed:
            return logits.cpu().numpy(), indices.cpu().numpy()
        import torch.distributed as dist

        got_logits = [torch.empty_like(logits) for _ in range(self.size)]
        got_indices = [torch.empty_like(indices) for _ in range(self.size)]
        with self.collective():
            dist.all_gather(got_logits, logits.contiguous())
            dist.all_gather(got_indices, indices.contiguous())
        all_logits = torch.cat(got_logits).cpu().numpy()
        all_indices = torch.cat(got_indices).cpu().numpy()
        unique, first = np.unique(all_indices, return_index=True)
        if len(unique) != total or unique[0] != 0 or unique[-1] != total - 1:
            raise EdgetlError(f"validation gathered {len(unique)} distinct image(s) of {total}")
        return all_logits[first], unique

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every process. DDP sends them before each forward,
        so after the last training step each process still holds the statistics its own batch updated: validation
        must score the weights rank 0 saves, on every process."""
        if not self.distributed:
            return
        import torch.distributed as dist

        with self.collective():
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            with self.collective():
                dist.barrier()

    @contextmanager
    def collective(self) -> Iterator[None]:
        """A collective that fails (a peer died, or timed out after dist_timeout) is one PeerLost line."""
        try:
            yield
        except RuntimeError as e:
            raise self.lost(e) from None

    def lost(self, e: BaseException) -> PeerLost:
        return PeerLost(f"{self.describe()}: another process of this run stopped or stopped answering "
                        f"({_short(e)})")

    # --- the model --------------------------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DistributedDataParallel over the parameters that train now. Called again whenever the set of trainable
        parameters changes (lp-ft's switch from probe to fine-tuning): DDP registers its gradient hooks on the
        parameters that require grad when it is built, so frozen ones are outside it and no parameter goes
        unused: find_unused_parameters (an extra graph walk every step) is never needed."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        with self.collective():  # the constructor broadcasts rank 0's weights and buffers
            return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _short(e: BaseException) -> str:
    """gloo's and NCCL's first sentence, without the source location and advice they wrap it in."""
    import re

    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(e))
    return text.split(". ")[0].rstrip(".")


def is_collective_failure(e: BaseException) -> bool:
    """A RuntimeError raised by torch.distributed inside DDP's backward (gloo: a closed connection, a timeout;
    NCCL: DistBackendError) rather than by the model."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(k in text for k in ("gloo", "nccl", "connection closed", "timed out",
                                                                   "connection reset", "broken pipe"))
