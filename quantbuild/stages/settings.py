"""How a recipe's quantization fields become grid settings, shared by the stages that use them."""

from __future__ import annotations

from pathlib import Path

from quantbuild.quant.qdq import WeightOptions
from quantbuild.stages.context import Context


def feature_map_grid(q: dict) -> tuple[bool, bool]:
    """(symmetric, power_of_2) of activation grids.

    TIDL's simple calibration (accuracy_level 0) always uses power-of-2 feature maps."""
    return q["activations"] == "symmetric", q["scale"] == "power_of_2" or q["accuracy_level"] == 0


def weight_options(q: dict) -> WeightOptions:
    """Weight and bias quantization settings of a recipe's `quantization` section."""
    return WeightOptions(
        bits=q["bits"],
        per_channel=q["weights"]["per_channel"],
        power_of_2=q["scale"] == "power_of_2",
        bias_bits=q["bias_bits"],
        clipping=q["weight_clipping"],
    )


def float_model_path(ctx: Context) -> Path:
    """The float model the build quantizes: the equalized one when the recipe equalizes."""
    source = "equalize" if "equalize" in ctx.inputs else "prepare"
    return ctx.inputs[source].path("model.onnx")  # prepare.MODEL and equalize.MODEL
