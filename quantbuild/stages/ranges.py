"""ranges: activation ranges from cached statistics -> the quant-proto ranges file."""

from __future__ import annotations

from pathlib import Path

from quantbuild.build.files import load_npz
from quantbuild.calib.policy import minmax_ranges
from quantbuild.quant.ranges_io import dumps
from quantbuild.stages.context import Context

NAME = "ranges"
VERSION = 2
READS = ("/quantization/bits", "/quantization/activations", "/quantization/scale")
INPUTS = ("stats",)
EXPORTS = {"ranges.yaml": "ranges.yaml"}


def run(ctx: Context, out: Path) -> dict:
    q = ctx.recipe.data["quantization"]
    stats = load_npz(ctx.inputs["stats"].path("stats.npz"))
    ranges = minmax_ranges(
        stats, q["bits"], q["activations"] == "symmetric", q["scale"] == "power_of_2"
    )
    info = {
        "policy": "minmax",
        "bits": q["bits"],
        "activations": q["activations"],
        "scale": q["scale"],
        "frames": int(stats["frames"]),
    }
    (out / "ranges.yaml").write_text(dumps(ranges, info), encoding="utf-8")
    ctx.log(
        f"{len(ranges)} tensor ranges (minmax, {q['bits']}-bit, {q['activations']}, {q['scale']} scales)"
    )
    return {"tensors": len(ranges)}
