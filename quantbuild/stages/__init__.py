"""Pipeline stages. Each module declares NAME, VERSION, READS (recipe JSON pointers it reads),
INPUTS (upstream stages), EXPORTS (store file -> file name under build/<recipe>/) and
`run(ctx, out) -> meta`, which writes its artifact files into `out`.

Bump VERSION by hand whenever a stage's output for the same inputs changes.
"""

from quantbuild.stages import (
    equalize,
    evaluate,
    prepare,
    quantize,
    ranges,
    rounding,
    selection,
    sensitivity,
    stats,
)

PIPELINE = [
    prepare,
    equalize,
    stats,
    ranges,
    rounding,
    sensitivity,
    selection,
    quantize,
    evaluate,
]
BY_NAME = {stage.NAME: stage for stage in PIPELINE}

__all__ = ["BY_NAME", "PIPELINE"]
