"""A recipe's `quantization:` section as one typed object, shared by the stages that use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantbuild.quant.params import Grid
from quantbuild.stages.context import Context

# onnx and networkx are imported where used: a no-op build loads only the stage specs
if TYPE_CHECKING:
    from quantbuild.mixed.latency import LatencyTable
    from quantbuild.quant.qdq import WeightOptions


@dataclass(frozen=True)
class Quantization:
    """The resolved `quantization:` section (every default filled by the schema and resolve).

    A stage keys only the fields it lists in `reads`; reading a field here does not add it."""

    bits: int
    activations: str  # symmetric | asymmetric
    scale: str  # power_of_2 | float
    accuracy_level: int
    activation_clipping: str
    percentile: float
    per_channel: bool
    bias_bits: int
    weight_clipping: str
    weight_rounding: str
    bias_calibration: dict[str, int] | None  # None: off
    equalization: dict[str, Any] | None  # None: off
    mixed_precision: dict[str, Any]
    prequantized: bool

    @classmethod
    def of(cls, recipe: dict[str, Any]) -> Quantization:
        """From resolved recipe data."""
        q = recipe["quantization"]
        return cls(
            bits=q["bits"],
            activations=q["activations"],
            scale=q["scale"],
            accuracy_level=q["accuracy_level"],
            activation_clipping=q["activation_clipping"],
            percentile=q["percentile"],
            per_channel=q["weights"]["per_channel"],
            bias_bits=q["bias_bits"],
            weight_clipping=q["weight_clipping"],
            weight_rounding=q["weight_rounding"],
            bias_calibration=q["bias_calibration"] or None,
            equalization=q["equalization"] or None,
            mixed_precision=q["mixed_precision"],
            prequantized=q["prequantized"],
        )

    @property
    def grid(self) -> Grid:
        """The activation (feature map) grid. TIDL's simple calibration (accuracy_level 0)
        always uses power-of-2 feature maps."""
        return Grid(
            bits=self.bits,
            symmetric=self.activations == "symmetric",
            power_of_2=self.scale == "power_of_2" or self.accuracy_level == 0,
        )

    @property
    def weights(self) -> WeightOptions:
        """Weight and bias quantization settings."""
        from quantbuild.quant.qdq import WeightOptions

        return WeightOptions(
            bits=self.bits,
            per_channel=self.per_channel,
            power_of_2=self.scale == "power_of_2",
            bias_bits=self.bias_bits,
            clipping=self.weight_clipping,
        )

    @property
    def automatic_mixed_precision(self) -> bool:
        """A latency budget (factor) or an accuracy target (max_drop) in an 8-bit build."""
        mp = self.mixed_precision
        return self.bits == 8 and bool(mp.get("factor") or "max_drop" in mp)


def latency_table(ctx: Context) -> LatencyTable | None:
    """The recipe's measured per-layer times (mixed_precision.latency_table), if any."""
    from quantbuild.mixed.latency import read_table

    path = Quantization.of(ctx.recipe.data).mixed_precision.get("latency_table")
    return read_table(path) if path else None
