"""PyTorch eager (optionally torch.compile) on the fine-tuned checkpoint."""

from __future__ import annotations

import numpy as np

from edgetl.card import ModelCard
from edgetl.errors import BackendUnavailable, EdgetlError
from edgetl.runtime.base import Backend

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchBackend(Backend):
    name = "torch"

    def activate_impl(self) -> ModelCard:
        import torch

        from edgetl.models import load_trained

        if self.precision not in _DTYPES:
            raise EdgetlError(f"torch backend: precision '{self.precision}' is not one of {', '.join(_DTYPES)}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch backend: no CUDA device here", "use --device cpu")
        if self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))  # process-wide: torch has no per-model setting
        model, card = load_trained(self.model_file())
        self.dtype = getattr(torch, _DTYPES[self.precision])
        model = model.to(self.device, dtype=self.dtype).eval()
        if self.device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)
        if self.options.get("compile"):
            model = torch.compile(model)
        self.model = model
        self._torch = torch
        return card

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device, dtype=self.dtype, non_blocking=True)
            if self.device.startswith("cuda"):
                t = t.contiguous(memory_format=torch.channels_last)
            return self.model(t).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()

    def describe(self) -> dict:
        out = super().describe()
        where = "host->GPU copy + forward + GPU->host copy" if self.device.startswith("cuda") else "forward pass on the CPU"
        out["timed"] = where + (" (torch.compile)" if self.options.get("compile") else " (eager)")
        return out

    def deactivate_impl(self) -> None:
        del self.model
