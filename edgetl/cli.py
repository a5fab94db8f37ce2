"""The `edgetl` command line: one thin command per stage. Logic lives in the stage modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgetl.console import console, err_console

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Fine-tune, export, quantize, build and benchmark image classifiers for NVIDIA edge devices.")


def main() -> None:
    """Console-script entry: EdgetlError becomes one line on stderr and exit code 1, never a traceback."""
    from edgetl.errors import EdgetlError

    try:
        app(standalone_mode=False)
    except EdgetlError as e:
        err_console.print(f"[bold red]error:[/] {e.message}", markup=True, soft_wrap=True)
        if e.hint:
            err_console.print(f"  hint: {e.hint}", soft_wrap=True, markup=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as e:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


# --- finetune ---------------------------------------------------------------------------------------
@app.command()
def finetune(
    data: Path = typer.Argument(..., help="ImageFolder: DATA/train/<class>, DATA/val/<class>, or DATA/<class> (split)"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory to write"),
    config: Optional[Path] = typer.Option(None, help="YAML file of settings; options given here override it"),
    model: Optional[str] = typer.Option(None, help="timm model name [default: resnet50]"),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="hub weights via timm [default: on]"),
    weights: Optional[str] = typer.Option(None, help="local weights: .safetensors, .pth or an edgetl run dir"),
    strategy: Optional[str] = typer.Option(None, help="linear | partial | full [default: full]"),
    unfreeze: Optional[int] = typer.Option(None, help="with --strategy partial: last N stages trained [default: 1]"),
    epochs: Optional[int] = typer.Option(None, help="[default: 10]"),
    batch_size: Optional[int] = typer.Option(None, help="[default: 32]"),
    lr: Optional[float] = typer.Option(None, help="head learning rate [default: 1e-3]"),
    backbone_lr_scale: Optional[float] = typer.Option(None, help="backbone lr = lr x this [default: 0.1]"),
    layer_decay: Optional[float] = typer.Option(None, help="timm layer-wise lr decay instead of one backbone scale"),
    weight_decay: Optional[float] = typer.Option(None, help="[default: 0.05]"),
    warmup_epochs: Optional[float] = typer.Option(None, help="[default: 1]"),
    label_smoothing: Optional[float] = typer.Option(None, help="[default: 0.1]"),
    img_size: Optional[int] = typer.Option(None, help="input size [default: the model's pretrained size]"),
    augment: Optional[str] = typer.Option(None, help="none | crop | flip | strong, or an albumentations YAML [default: flip]"),
    val_fraction: Optional[float] = typer.Option(None, help="val share when DATA has no train/val split [default: 0.2]"),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    workers: Optional[int] = typer.Option(None, help="data loader processes [default: 2]"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N] [default: auto]"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="mixed precision on GPU [default: on]"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model [default: off]"),
    patience: Optional[int] = typer.Option(None, help="early stopping after N epochs without improvement"),
    skip_bad_images: Optional[bool] = typer.Option(None, "--skip-bad-images", help="skip unreadable images and list them"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
) -> None:
    """Fine-tune a pretrained timm backbone on an image folder; writes the run directory."""
    from edgetl.config import FinetuneConfig, load_config
    from edgetl.finetune import finetune as run_finetune
    from edgetl.console import finetune_events

    overrides = {k: v for k, v in locals().items() if k not in ("config", "resume", "overwrite")}
    overrides["data"], overrides["out"] = str(data), str(out)
    cfg = load_config(FinetuneConfig, config, overrides)
    with finetune_events() as events:
        run_finetune(cfg, resume=resume, overwrite=overwrite, events=events)


# --- eval -------------------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    data: Optional[Path] = typer.Option(None, help="ImageFolder DIR/<class>/* [default: the run's own val split]"),
    backend: str = typer.Option("torch", help="torch | onnxruntime | tensorrt"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 (which model file of the run)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    batch_size: int = typer.Option(64),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the metrics here"),
) -> None:
    """Score a run's model on a folder with top-1/top-5/F1/AUC and the confusion matrix."""
    from edgetl.evaluate import eval_run
    from edgetl.console import print_metrics

    with console.status("evaluating"):
        metrics = eval_run(run, data=data, backend=backend, precision=precision, device=device, batch_size=batch_size)
    print_metrics(metrics)
    if json_out is not None:
        from edgetl.io import write_json

        write_json(json_out, metrics)


# --- demo -------------------------------------------------------------------------------------------
@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="where the demo writes its data and runs"),
    epochs: int = typer.Option(8, help="epochs per training run"),
    model: str = typer.Option("resnet18", help="timm model name"),
    img_size: int = typer.Option(32),
) -> None:
    """The whole chain on scikit-learn's digits (no download): transfer learning vs training from scratch,
    then export, quantization and the benchmark of what this machine can run."""
    from edgetl.demo import run_demo

    run_demo(out, epochs=epochs, model=model, img_size=img_size)


# --- export (issue 3) -------------------------------------------------------------------------------
# --- end export -------------------------------------------------------------------------------------

# --- quantize (issue 4) -----------------------------------------------------------------------------
# --- end quantize -----------------------------------------------------------------------------------

# --- build / bench (issue 5) ------------------------------------------------------------------------
# --- end build / bench ------------------------------------------------------------------------------

# --- deploy / bundle / triton (issue 6) -------------------------------------------------------------
# --- end deploy -------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
