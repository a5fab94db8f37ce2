"""What `edgetl demo` runs: the measured setting, scaled by a few knobs."""

from __future__ import annotations

from pydantic import Field, field_validator

from edgetl.stage import Settings

class DemoSettings(Settings):
    """What `edgetl demo` runs: the measured setting, scaled by these few knobs."""

    epochs: int = Field(10, ge=1, description="epochs per target run")
    img_size: int = Field(32, ge=8, le=2048, description="the 8x8 digits are upscaled to this")
    shots: int = Field(10, ge=1, le=70, description="labelled images per target class")
    seeds: int = Field(3, ge=1, le=10, description="repeats, each with its own labelled images and initialisation")
    strategy: str = Field("full", description="linear | partial | full | lp-ft")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from edgetl.models import STRATEGIES

        if value not in STRATEGIES:
            raise ValueError(f"strategy {value}: use one of {', '.join(STRATEGIES)}")
        return value
