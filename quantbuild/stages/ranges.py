"""ranges: activation ranges from cached statistics -> the quant-proto ranges file."""

from __future__ import annotations

from pathlib import Path

from quantbuild.build.files import load_npz
from quantbuild.calib.policy import activation_ranges
from quantbuild.quant.ranges_io import dumps
from quantbuild.stages.context import Context

NAME = "ranges"
VERSION = 4
READS = (
    "/quantization/bits",
    "/quantization/activations",
    "/quantization/scale",
    "/quantization/accuracy_level",
    "/quantization/activation_clipping",
    "/quantization/percentile",
)
INPUTS = ("stats",)
EXPORTS = {"ranges.yaml": "ranges.yaml"}


def run(ctx: Context, out: Path) -> dict:
    q = ctx.recipe.data["quantization"]
    stats = load_npz(ctx.inputs["stats"].path("stats.npz"))
    # TIDL's simple calibration (accuracy_level 0) always uses power-of-2 feature maps.
    power_of_2 = q["scale"] == "power_of_2" or q["accuracy_level"] == 0
    policy = q["activation_clipping"]
    ranges = activation_ranges(
        stats, policy, q["bits"], q["activations"] == "symmetric", power_of_2, q["percentile"]
    )
    info = {
        "policy": policy,
        "bits": q["bits"],
        "activations": q["activations"],
        "scale": "power_of_2" if power_of_2 else "float",
        "frames": int(stats["frames"]),
    }
    if policy == "percentile":
        info["percentile"] = q["percentile"]
    (out / "ranges.yaml").write_text(dumps(ranges, info), encoding="utf-8")
    ctx.log(
        f"{len(ranges)} tensor ranges ({policy}, {q['bits']}-bit, {q['activations']}, {info['scale']} scales)"
    )
    return {"tensors": len(ranges)}
