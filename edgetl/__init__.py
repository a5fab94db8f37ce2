"""edgetl: fine-tune, export, quantize, build and benchmark image classifiers for NVIDIA edge devices."""

__version__ = "0.1.0"
