"""One Markdown table across all recipes: float vs quantized metrics, bits, device."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    recipe: str
    device: str | None
    quantization: dict
    metrics: dict | None  # evaluate's metrics.json, None when not evaluated
    precision: dict | None = None  # quantize's precision.json


def precision_label(precision: dict | None) -> str:
    """ "–", "all", or how many layers mixed precision widened and the latency it costs."""
    if not precision:
        return "–"
    rows = precision["layers"]
    wide = sum(r["output_bits"] == 16 or r.get("weight_bits") == 16 for r in rows)
    if precision["bits"] == 16 or wide == 0:
        return "all" if precision["bits"] == 16 else "none"
    ratio = (precision.get("latency") or {}).get("ratio")
    return f"{wide}/{len(rows)}" + (f", T_MP/T_8 {ratio:.2f}" if ratio else "")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def scheme_label(q: dict) -> str:
    weights = "per-channel" if q["weights"]["per_channel"] else "per-tensor"
    scale = "pow2" if q["scale"] == "power_of_2" else "float"
    return f"{q['activations'][:4]}, {scale}, {weights}"


def render(rows: list[Row]) -> str:
    """The report text (deterministic for the same rows)."""
    lines = [
        "# quantbuild report",
        "",
        "| recipe | device | bits | 16-bit layers | scheme | float top-1 | quant top-1 | Δ top-1 | min SQNR (dB) | min cosine | frames |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r.recipe):
        m = row.metrics or {}
        top1 = m.get("top1", {})
        f, q = top1.get("float"), top1.get("quantized")
        delta = None if f is None or q is None else q - f
        sqnrs = [
            o["sqnr_db"] for o in m.get("outputs", {}).values() if o.get("sqnr_db") is not None
        ]
        cosines = [o["cosine"] for o in m.get("outputs", {}).values() if "cosine" in o]
        lines.append(
            f"| {row.recipe} | {row.device or '–'} | {row.quantization['bits']} | {precision_label(row.precision)} "
            f"| {scheme_label(row.quantization)} "
            f"| {_fmt(f)} | {_fmt(q)} | {'–' if delta is None else f'{delta:+.4f}'} "
            f"| {_fmt(min(sqnrs) if sqnrs else None, 2)} | {_fmt(min(cosines) if cosines else None, 5)} "
            f"| {m.get('frames', '–')} |"
        )
    lines += [
        "",
        "SQNR and cosine compare each quantized output with the float model on the evaluation set "
        "(the lowest over outputs is shown); top-1 needs labels.",
        "",
    ]
    return "\n".join(lines)
