"""A recipe file turned into the final, validated, default-filled recipe."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbuild.errors import DataError, ModelError, RecipeError, Where
from quantbuild.recipe.load import Located, load_yaml
from quantbuild.recipe.merge import load_with_extends
from quantbuild.recipe.overrides import apply_overrides
from quantbuild.recipe.validate import fill_defaults, validate
from quantbuild.resources import recipe_schema

# Fields holding paths, resolved against the file that set them.
PATH_FIELDS = [
    ("model",),
    ("calibration", "data", "images"),
    ("calibration", "data", "tensors"),
    ("evaluation", "data", "images"),
    ("evaluation", "data", "tensors"),
    ("quantization", "ranges", "import"),
    ("quantization", "mixed_precision", "latency_table"),
]
DATASETS = [("calibration", "data"), ("evaluation", "data")]
# Files other than the model and datasets that stages read: keyed by content, never by path.
INPUT_FILES = [
    ("quantization", "ranges", "import"),
    ("quantization", "mixed_precision", "latency_table"),
]


def _quantization_schema() -> dict[str, Any]:
    return recipe_schema()["properties"]["quantization"]["properties"]


def _implied(field: str) -> dict[str, dict[str, Any]]:
    """A field's `x-implies` table in the schema: value -> defaults of other switches."""
    table = _quantization_schema()[field]["x-implies"]
    return {value: implied for value, implied in table.items() if not value.startswith("$")}


def object_defaults(field: str) -> dict[str, Any]:
    """The property defaults of a quantization field's object form (e.g. bias_calibration)."""
    forms = _quantization_schema()[field]["oneOf"]
    (form,) = [f for f in forms if f.get("type") == "object"]
    return {k: v["default"] for k, v in form["properties"].items() if "default" in v}


# Every default lives in the schema; these are read from it once. TIDL's accuracy_level turns
# switches on (level 9: the same defaults, set explicitly). Weight clipping is on at levels 1/9
# as in TIDL, with the MSE clip: TIDL's own rule (`tidl`), applied to BatchNorm-folded weights,
# clips large depthwise channels; it cost PP-LCNet orientation 40 % of its top-1 in our
# benchmark (docs/tidl.md). Cross-layer equalization (not a TIDL switch) is on by default:
# per-tensor grids gain most (PP-OCRv4 det, TDA4VM IoU 0.906 -> 0.934, benchmarks/README.md).
ACCURACY_LEVELS = {int(level): implied for level, implied in _implied("accuracy_level").items()}
SIXTEEN_BIT = _implied("bits")["16"]
PREQUANTIZED = _implied("prequantized")["true"]
BIAS_CALIBRATION = object_defaults("bias_calibration")
EQUALIZATION = object_defaults("equalization")


@dataclass(frozen=True)
class Recipe:
    """A resolved recipe: final values (absolute paths, defaults filled) and their provenance."""

    name: str
    file: Path
    data: dict
    doc: Located

    def get(self, path: tuple, default: Any = None) -> Any:
        """Value at a path such as ("quantization", "bits")."""
        node: Any = self.data
        for part in path:
            if not isinstance(node, (dict, list)):
                return default
            try:
                node = node[part]
            except (KeyError, IndexError):
                return default
        return node

    def where(self, path: tuple) -> Where:
        """Where the value at `path` (or its nearest parent) was set."""
        return self.doc.where(path) or Where(str(self.file))

    @property
    def model(self) -> Path:
        return Path(self.data["model"])


def _get(data: dict, path: tuple) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _set(data: dict, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _base_dir(where: Where | None, fallback: Path) -> Path:
    if where is None or where.file.startswith("-S "):
        return Path.cwd() if where else fallback
    return Path(where.file).parent


def expand_accuracy_level(data: dict, doc: Located) -> None:
    """Fill the switches that accuracy_level implies, unless the recipe sets them."""
    q = data["quantization"]
    level = q["accuracy_level"]
    origin = Where(f"accuracy_level {level}")
    implied = dict(ACCURACY_LEVELS[level])
    if q.get("bits") == 16:
        # PP-OCRv4 det on AM68A, 16-bit: IoU vs float 0.980 with percentile, 0.9995 min/max.
        implied.update(SIXTEEN_BIT)
        origin = Where(f"accuracy_level {level}, 16-bit")
    if q.get("prequantized"):
        implied.update(PREQUANTIZED)
        origin = Where(f"accuracy_level {level}, prequantized")
    for key, value in implied.items():
        if key not in q:
            q[key] = copy.deepcopy(value)
            doc.values[("quantization", key)] = origin
    bias = q["bias_calibration"]
    if bias is True or isinstance(bias, dict):
        q["bias_calibration"] = {**BIAS_CALIBRATION, **(bias if isinstance(bias, dict) else {})}
        for key in BIAS_CALIBRATION:
            doc.values.setdefault(
                ("quantization", "bias_calibration", key),
                doc.where(("quantization", "bias_calibration")),
            )


def _resolve_equalization(q: dict, doc: Located) -> None:
    """On by default, whatever the bit width (switching bits must not re-run statistics).
    Imported ranges bring their own default: equalized as the build that wrote them when a
    quantbuild ranges file says so, else off (TIDL and onnxruntime ranges are of the original
    tensors); a pre-quantized model is never equalized."""
    path = ("quantization", "equalization")
    value = q.get("equalization")
    if value is None:
        imported = (q.get("ranges") or {}).get("import")
        if q.get("prequantized"):
            q["equalization"] = False
            doc.values[path] = Where("default for prequantized")
        elif imported:
            q["equalization"] = _imported_equalization(Path(imported)) or False
            doc.values[path] = Where(f"default for ranges import {Path(imported).name}")
        else:
            q["equalization"] = dict(EQUALIZATION)
    elif value is not False and q.get("prequantized"):
        raise RecipeError(
            "quantization.equalization: a pre-quantized model's scales fit its own weights; "
            "remove equalization or set it to false",
            doc.where(path),
        )
    elif value is True or isinstance(value, dict):
        q["equalization"] = {**EQUALIZATION, **(value if isinstance(value, dict) else {})}
        doc.values.setdefault(path + ("frames",), doc.where(path))


def _imported_equalization(source: Path) -> dict | None:
    """The equalization a quantbuild ranges file was calibrated with (None: none)."""
    if source.suffix.lower() not in (".yaml", ".yml") or not source.is_file():
        return None  # a missing file is reported by _check_inputs
    # Only the header is needed, read with the recipe loader's safe YAML (the ranges file
    # format itself belongs to interop/, a layer above recipes); a broken file is reported
    # when the ranges stage reads it.
    try:
        header = load_yaml(source).data
    except RecipeError:
        return None
    equalization = header.get("equalization") if isinstance(header, dict) else None
    if not isinstance(equalization, dict):
        return None
    frames, alpha = equalization.get("frames"), equalization.get("smoothquant")
    # A hand-edited file is not schema-checked: only a positive count and an alpha in [0, 1].
    if not (isinstance(frames, int) and not isinstance(frames, bool) and frames > 0):
        return None
    found: dict = {"frames": frames}
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 <= alpha <= 1:
        found["smoothquant"] = alpha
    return found


def _resolve_paths(data: dict, doc: Located, recipe_file: Path) -> None:
    for path in PATH_FIELDS:
        value = _get(data, path)
        if value is None:
            continue
        base = _base_dir(doc.where(path), recipe_file.parent)
        _set(data, path, str((base / Path(value).expanduser()).resolve()))
    for dataset in DATASETS:
        labels = _get(data, dataset + ("labels",))
        if labels and labels != "folders" and labels.endswith((".txt", ".csv")):
            base = _base_dir(doc.where(dataset + ("labels",)), recipe_file.parent)
            _set(data, dataset + ("labels",), str((base / labels).resolve()))


def _check_inputs(recipe: Recipe) -> None:
    if not recipe.model.is_file():
        raise ModelError(
            f"model: file not found: {recipe.model}; fix the path (relative to the file that sets it)",
            recipe.where(("model",)),
        )
    for field in INPUT_FILES:
        given = recipe.get(field)
        if given and not Path(given).is_file():
            raise RecipeError(
                f"{'.'.join(field)}: file not found: {given}; fix the path (relative to the "
                "file that sets it)",
                recipe.where(field),
            )
    for dataset in DATASETS:
        section = recipe.get(dataset)
        if section is None:
            continue
        dotted = ".".join(dataset)
        kinds = [k for k in ("images", "tensors") if k in section]
        if len(kinds) != 1:
            fix = (
                "; to switch kinds in a recipe that extends another, set the inherited one to "
                "null (`images: null`)"
                if len(kinds) == 2
                else ""
            )
            raise RecipeError(
                f"{dotted}: give exactly one of 'images' (a folder) or 'tensors' (.npz/.npy)" + fix,
                recipe.where(dataset),
            )
        source = Path(section[kinds[0]])
        if not source.exists():
            raise DataError(
                f"{dotted}.{kinds[0]}: not found: {source}; fix the path",
                recipe.where(dataset + (kinds[0],)),
            )
        labels = section.get("labels")
        if labels and labels.endswith((".txt", ".csv")) and not Path(labels).is_file():
            raise DataError(
                f"{dotted}.labels: file not found: {labels}", recipe.where(dataset + ("labels",))
            )


def _check_mixed_precision(recipe: Recipe) -> None:
    mp = recipe.data["quantization"]["mixed_precision"]
    if "max_drop" in mp and "evaluation" not in recipe.data:
        raise RecipeError(
            "quantization.mixed_precision.max_drop: the task metric is measured on evaluation "
            "data; add an `evaluation:` section, or use `factor` (a latency budget) instead",
            recipe.where(("quantization", "mixed_precision", "max_drop")),
        )


def load_recipe(file: Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, merge, override, validate and default-fill one recipe; check its inputs exist."""
    file = Path(file).resolve()
    doc = load_with_extends(file)
    if overrides:
        doc = apply_overrides(doc, list(overrides))
    schema = recipe_schema()
    validate(doc, schema)
    data = fill_defaults(copy.deepcopy(doc.data), schema)
    expand_accuracy_level(data, doc)
    if "evaluation" in data and "preprocess" not in doc.data["evaluation"]:
        data["evaluation"]["preprocess"] = copy.deepcopy(data["calibration"]["preprocess"])
        for p, w in list(doc.values.items()):
            if p[:2] == ("calibration", "preprocess"):
                doc.values[("evaluation",) + p[1:]] = w
    _resolve_paths(data, doc, file)
    _resolve_equalization(data["quantization"], doc)
    recipe = Recipe(name=data.get("name") or file.stem, file=file, data=data, doc=doc)
    _check_inputs(recipe)
    _check_mixed_precision(recipe)
    return recipe
