"""TIDL runtime options and edgeai-benchmark model configs <-> quantbuild recipes.

Both directions go through one table, `OPTIONS`: each TIDL runtime option, the recipe field(s) it
maps onto, TIDL's default, and when TIDL reads it at all (the accuracy_level 9 switches). The
edgeai-benchmark preprocessing keys have a table of the same shape, `PREPROCESS`.

Shapes followed (TexasInstruments repositories, read through the code search):

- TIDL runtime options: edgeai-tidl-tools `examples/osrt_python/common_utils.py` (the options
  dict with `platform`, `tensor_bits`, `accuracy_level`, `advanced_options:*`, `deny_list:*`, and
  the note that the clipping / bias / channel-wise switches are read only at accuracy_level 9).
- edgeai-benchmark model configs: edgeai-tensorlab `edgeai-modelzoo/models/vision/classification/
  imagenet1k/edgeai-tv2/mobilenet_v2_lite_wt-v2_20231101_model_config.yaml`, `.../tf1-models/
  mobilenet_v1_1.0_224_config.yaml`, `.../detection/coco/edgeai-mmdet/
  ssd_regnetx-800mf_fpn_bgr_lite_512x512_20200919_model_config.yaml` and `yolox_nano_lite_
  416x416_20220214_model_config.yaml`, and `edgeai-benchmark/examples/configs/yaml/
  param_classification_onnxrt.yaml` (commented field reference): top-level `task_type`,
  `preprocess`, `session` {session_name, model_path, input_mean, input_scale,
  input_optimization, input_data_layout, runtime_options, target_device}, `postprocess`, ...
- Preprocessing semantics: `edgeai-benchmark/edgeai_benchmark/preprocess/__init__.py` and
  `transforms.py` (images read as RGB by either backend; resize, an integer scaling the shorter
  side; center crop; layout; then `reverse_channels`; the session applies (x - mean) * scale).
- Device scale types: `edgeai-benchmark/edgeai_benchmark/core/presets.py` (TDA4VM 1, AM6xA 4).
"""

from __future__ import annotations

import io
import json
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from quantbuild.errors import RecipeError
from quantbuild.recipe.load import Located, load_yaml
from quantbuild.recipe.resolve import BIAS_CALIBRATION, PATH_FIELDS, expand_accuracy_level
from quantbuild.recipe.validate import fill_defaults, subschema
from quantbuild.resources import presets_dir, recipe_schema
from quantbuild.suggest import closest
from quantbuild.textfile import read_utf8

Field = tuple[str, ...]
QUANTIZATION = ("quantization",)
SWITCHES = ("activation_clipping", "weight_clipping", "bias_calibration")
DEVICES = ("tda4vm", "am62a", "am67a", "am68a", "am69a")
# Device and SoC names a config may carry (`platform`, `target_device`). "J7" names TIDL's
# platform family for every one of these devices, so it says nothing about the device.
DEVICE_NAMES = {
    **{d: d for d in DEVICES},
    "j721e": "tda4vm",
    "j722s": "am67a",
    "tda4aen": "am67a",
    "j721s2": "am68a",
    "tda4vl": "am68a",
    "tda4al": "am68a",
    "tda4ve": "am68a",
    "j784s4": "am69a",
    "tda4vh": "am69a",
}
# edgeai-benchmark presets: TDA4VM is power-of-2, the MMAv2 devices asymmetric per-channel.
DEVICE_SCALE_TYPE = {"tda4vm": 1, "am62a": 4, "am67a": 4, "am68a": 4, "am69a": 4}


# ---------------------------------------------------------------------------------------------
# Codecs: `tidl` checks a value from a config and returns it in canonical form (ValueError says
# the fix); `decode` turns a canonical value into the recipe's; `encode` goes back, with a reason
# when TIDL cannot say the recipe value exactly.


def _int(value: Any) -> int:
    # ORT provider options are strings by nature ("8"); YAML may say true/false for switches.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueError("give an integer")


class Same:
    """A value that means the same on both sides."""

    def tidl(self, value: Any) -> Any:
        return value

    def decode(self, value: Any) -> Any:
        return value

    def encode(self, value: Any) -> tuple[Any, str | None]:
        return value, None


@dataclass(frozen=True)
class ValueMap:
    """A fixed set of TIDL values, each meaning one recipe value.

    `approx` maps recipe values TIDL cannot say exactly to (nearest TIDL value, why).
    """

    values: dict
    expect: str = ""
    approx: dict = field(default_factory=dict)
    coerce: Callable[[Any], Any] = _int

    def tidl(self, value: Any) -> Any:
        try:
            key = self.coerce(value)
            known = key in self.values
        except (ValueError, TypeError):
            known = False
        if not known:
            raise ValueError(self.expect or "use " + ", ".join(map(str, self.values)))
        return key

    def decode(self, value: Any) -> Any:
        return self.values[value]

    def encode(self, value: Any) -> tuple[Any, str | None]:
        for key, meaning in self.values.items():
            if meaning == value:
                return key, None
        return self.approx[value]


class Count(Same):
    """A positive integer."""

    def tidl(self, value: Any) -> int:
        number = _int(value)
        if number < 1:
            raise ValueError("give 1 or more")
        return number


class Frames(Count):
    """TIDL calibration_frames: the frames calibrated on, for ranges and bias calibration alike.

    The recipe has two fields for it: calibration.data.limit, quantization.bias_calibration.frames.
    """

    def decode(self, value: int) -> tuple[int, int]:
        return value, value

    def encode(self, value: tuple) -> tuple[Any, str | None]:
        limit, bias_frames = value
        if bias_frames is None:
            why = None if limit else "calibration.data has no limit; TIDL calibrates on 20 frames"
            return limit, why
        if limit is not None and limit < bias_frames:
            return limit, None  # bias calibration runs on the first frames of the limited set
        if limit is not None and limit > bias_frames:
            return bias_frames, (
                "TIDL uses one number of frames for ranges and bias calibration: wrote "
                f"bias_calibration.frames {bias_frames}, not calibration.data.limit {limit}"
            )
        return bias_frames, None


@dataclass(frozen=True)
class Text(Same):
    """A string option: a path, or a comma-separated list of names."""

    to_recipe: Callable[[str], Any] = str
    to_tidl: Callable[[Any], str] = str

    def tidl(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("give a string")
        return value

    def decode(self, value: str) -> Any:
        return self.to_recipe(value)

    def encode(self, value: Any) -> tuple[Any, str | None]:
        return self.to_tidl(value), None


class Number(Same):
    """A real number."""

    def tidl(self, value: Any) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("give a number") from None


class Size(Same):
    """An image size: an integer or [height, width]; null for none."""

    def tidl(self, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if value is None or not isinstance(value, list):
            return value if value is None else Count().tidl(value)
        if len(value) != 2:
            raise ValueError("give an integer or [height, width]")
        return [Count().tidl(v) for v in value]


class Numbers(Same):
    """Per-channel numbers (mean, scale): a list, or one number for all channels."""

    def tidl(self, value: Any) -> Any:
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
            raise ValueError("give a list of numbers")
        return items


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


class Switch(ValueMap):
    """0 / 1 for off / on; on the recipe side anything but false is on ({frames: 20} too)."""

    def encode(self, value: Any) -> tuple[Any, str | None]:
        return super().encode(value is not False)


SWITCH = Switch({0: False, 1: True}, "use 0 (off) or 1 (on)")
SCALE_TYPES = ValueMap(
    {
        0: ("float", "symmetric", False),
        1: ("power_of_2", "symmetric", False),
        4: ("float", "asymmetric", True),
    },
    "use 0 (float scales), 1 (power-of-2) or 4 (asymmetric, per-channel weights); "
    "3 (TFLite pre-quantized) is reported as not imported",
    approx={
        # Symmetric per-channel weights: type 0/1 plus channel_wise_quantization (exact).
        ("float", "symmetric", True): (0, None),
        ("power_of_2", "symmetric", True): (1, None),
        ("float", "asymmetric", False): (4, "TIDL's asymmetric type 4 has per-channel weights"),
        ("power_of_2", "asymmetric", False): (1, "TIDL's power-of-2 type 1 is symmetric"),
        ("power_of_2", "asymmetric", True): (1, "TIDL's power-of-2 type 1 is symmetric"),
    },
)


# ---------------------------------------------------------------------------------------------
# The tables


@dataclass(frozen=True)
class Option:
    """One TIDL option (or edgeai config key) and the recipe field(s) it maps onto."""

    key: str
    fields: tuple[Field, ...]  # recipe fields; several when one option sets several
    codec: Any
    default: Any = None  # TIDL's value when absent (None: none, or set by the device)
    always: bool = False  # a core option: always mapped, always exported
    read_if: Callable[[dict], bool] | None = None  # TIDL reads it only when this holds
    read_when: str = ""  # ... in words
    what: str = ""  # for options quantbuild has no field for yet: what they do

    def read(self, options: dict) -> bool:
        return self.read_if is None or self.read_if(options)


LEVEL = "accuracy_level"
SCALE_TYPE = "advanced_options:quantization_scale_type"
BIAS = "advanced_options:bias_calibration"


def _level_9(options: dict) -> bool:
    return options.get(LEVEL) == 9


def _channel_wise(options: dict) -> bool:
    # Type 4 is per-channel whatever this says (edgeai-benchmark core/runtime_options.py).
    return _level_9(options) and options.get(SCALE_TYPE) in (0, 1)


def _bias_on(options: dict) -> bool:
    return options.get(LEVEL) == 1 or (_level_9(options) and options.get(BIAS, 1) == 1)


AT_9 = "TIDL reads it only at accuracy_level 9"
OPTIONS: tuple[Option, ...] = (
    Option("tensor_bits", (QUANTIZATION + ("bits",),), ValueMap({8: 8, 16: 16}), 8, always=True),
    Option(LEVEL, (QUANTIZATION + (LEVEL,),), ValueMap({0: 0, 1: 1, 9: 9}), 1, always=True),
    Option(
        SCALE_TYPE,
        (
            QUANTIZATION + ("scale",),
            QUANTIZATION + ("activations",),
            QUANTIZATION + ("weights", "per_channel"),
        ),
        SCALE_TYPES,
        always=True,
    ),
    Option(
        "advanced_options:channel_wise_quantization",
        (QUANTIZATION + ("weights", "per_channel"),),
        SWITCH,
        0,
        always=True,
        read_if=_channel_wise,
        read_when="TIDL reads it only at accuracy_level 9 with quantization_scale_type 0 or 1",
    ),
    Option(
        "advanced_options:activation_clipping",
        (QUANTIZATION + ("activation_clipping",),),
        ValueMap(
            {0: "minmax", 1: "percentile"},
            approx={
                "mse": (1, "TIDL clips by histogram percentile, not by MSE"),
                "entropy": (1, "TIDL clips by histogram percentile, not by entropy"),
            },
        ),
        1,
        always=True,
        read_if=_level_9,
        read_when=AT_9,
    ),
    Option(
        "advanced_options:weight_clipping",
        (QUANTIZATION + ("weight_clipping",),),
        # On is quantbuild's MSE clip, as at accuracy_level 1 (docs/tidl.md says why).
        ValueMap({0: "none", 1: "mse"}, approx={"tidl": (1, None)}),
        1,
        always=True,
        read_if=_level_9,
        read_when=AT_9,
    ),
    Option(
        BIAS,
        (QUANTIZATION + ("bias_calibration",),),
        SWITCH,
        1,
        always=True,
        read_if=_level_9,
        read_when=AT_9,
    ),
    Option(
        "advanced_options:calibration_frames",
        (("calibration", "data", "limit"), QUANTIZATION + ("bias_calibration", "frames")),
        Frames(),
        20,
        always=True,
    ),
    Option(
        "advanced_options:calibration_iterations",
        (QUANTIZATION + ("bias_calibration", "iterations"),),
        Count(),
        50,
        always=True,
        read_if=_bias_on,
        read_when="TIDL reads it only with bias calibration on",
    ),
    # Mapped once the schema has the field; until then listed under "not imported".
    Option(
        "advanced_options:quant_params_proto_path",
        (QUANTIZATION + ("ranges", "import"),),
        Text(),
        "",
        what="quantization ranges file",
    ),
    Option(
        "advanced_options:prequantized_model",
        (QUANTIZATION + ("prequantized",),),
        SWITCH,
        0,
        what="scales taken from an ONNX QDQ model",
    ),
    Option(
        "advanced_options:output_feature_16bit_names_list",
        (QUANTIZATION + ("mixed_precision", "output_16bit"),),
        Text(_names, ", ".join),
        "",
        what="layers whose outputs and weights run in 16 bits",
    ),
    Option(
        "advanced_options:params_16bit_names_list",
        (QUANTIZATION + ("mixed_precision", "params_16bit"),),
        Text(_names, ", ".join),
        "",
        what="layers whose weights run in 16 bits",
    ),
    Option(
        "advanced_options:mixed_precision_factor",
        (QUANTIZATION + ("mixed_precision", "factor"),),
        Number(),
        -1.0,
        what="automatic mixed precision",
    ),
    # No recipe field planned: quantbuild simulates the accelerator for every operator.
    Option("deny_list", (), Text(), "", what="operators TIDL keeps in float; no recipe field"),
    Option(
        "deny_list:layer_type",
        (),
        Text(),
        "",
        what="operators TIDL keeps in float; no recipe field",
    ),
    Option(
        "deny_list:layer_name", (), Text(), "", what="layers TIDL keeps in float; no recipe field"
    ),
    Option(
        "advanced_options:pre_batchnorm_fold",
        (),
        SWITCH,
        1,
        what="unfolded BatchNorm; quantbuild always folds it",
    ),
)
# Option families quantbuild has no field for, by prefix.
OPTION_FAMILIES = {
    "object_detection:": "TIDL's detection post-processing; quantbuild quantizes the ONNX "
    "graph as it is",
}
# Options with no effect on the quantized model.
IGNORED_OPTIONS = {
    "platform",
    "version",
    "debug_level",
    "artifacts_folder",
    "tidl_tools_path",
    "max_num_subgraphs",
    "model_type",
    "ti_internal_nc_flag",
    "info",
    "inference_mode",
    "core_number",
    "core_start_idx",
    "priority",
    "max_pre_empt_delay",
    "advanced_options:add_data_convert_ops",
    "advanced_options:high_resolution_optimization",
    "advanced_options:max_num_subgraph_nodes",
    "advanced_options:c7x_firmware_version",
    "advanced_options:inference_mode",
}

PREPROCESS_PATH = ("calibration", "preprocess")
# edgeai-benchmark gives PIL's constants (its pil backend) or null for bilinear.
INTERPOLATION = ValueMap(
    {None: "bilinear", 0: "nearest", 3: "bicubic", 1: "lanczos", 2: "bilinear"}
    | {name: name for name in ("bilinear", "nearest", "bicubic", "lanczos")},
    "use null, nearest, bilinear, bicubic or lanczos (or PIL's 0, 2, 3, 1)",
    coerce=lambda v: v if v is None else (v.lower() if isinstance(v, str) else _int(v)),
)
CV2_INTERPOLATION = {0: "nearest", 1: "bilinear", 2: "bicubic", 3: "area", 4: "lanczos"}
PREPROCESS: tuple[Option, ...] = (
    Option("preprocess.resize", (PREPROCESS_PATH + ("resize",),), Size()),
    Option("preprocess.crop", (PREPROCESS_PATH + ("crop",),), Size()),
    Option(
        "preprocess.data_layout",
        (PREPROCESS_PATH + ("layout",),),
        ValueMap({"NCHW": "NCHW", "NHWC": "NHWC"}, coerce=lambda v: str(v).upper()),
    ),
    Option(
        "preprocess.reverse_channels",
        (PREPROCESS_PATH + ("color",),),
        ValueMap(
            {False: "rgb", True: "bgr"},
            "use true or false",
            approx={"gray": (False, "edgeai-benchmark reads images as RGB")},
            coerce=lambda v: bool(_int(v)),
        ),
    ),
    Option("preprocess.interpolation", (PREPROCESS_PATH + ("interpolation",),), INTERPOLATION),
    Option("session.input_mean", (PREPROCESS_PATH + ("mean",),), Numbers()),
    Option("session.input_scale", (PREPROCESS_PATH + ("scale",),), Numbers()),
    # No recipe field: only the value that matches quantbuild's preprocessing imports.
    Option(
        "preprocess.backend",
        (),
        ValueMap({"pil": "pil"}, coerce=lambda v: str(v).lower()),
        "pil",
        what="quantbuild resizes with Pillow, not OpenCV",
    ),
    Option(
        "preprocess.resize_with_pad",
        (),
        ValueMap({False: False}, coerce=lambda v: bool(v[0] if isinstance(v, list) else v)),
        False,
        what="aspect-preserving resize with padding",
    ),
    Option(
        "preprocess.add_flip_image",
        (),
        ValueMap({False: False}, coerce=bool),
        False,
        what="adds a flipped copy of every image",
    ),
)
# Keys read elsewhere than the tables: the model, the options, device hints, aliases.
EDGEAI_READ = {
    "preprocess",
    "session",
    "target_device",
    "session.model_path",
    "session.runtime_options",
    "session.target_device",
    "session.input_data_layout",
    "preprocess.mean",
    "preprocess.scale",
}
EDGEAI_IGNORED = {
    "task_type",
    "dataset_category",
    "calibration_dataset",
    "input_dataset",
    "postprocess",
    "metric",
    "model_info",
    "target_machine",
    "preprocess.pad_color",
    "session.session_name",
    "session.model_folder",
    "session.artifacts_folder",
    "session.model_id",
    "session.input_details",
    "session.output_details",
    "session.num_inputs",
    "session.input_optimization",
    "session.target_machine",
    "session.tidl_offload",
}


# ---------------------------------------------------------------------------------------------
# Helpers


def _get(data: Any, path: Field) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _set(data: dict, path: Field, value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def _has_field(path: Field) -> bool:
    """Whether the recipe schema, as installed now, has this field."""
    root = recipe_schema()
    nodes = [root]
    for part in path:
        # A field may sit in one of several alternatives (bias_calibration: false | {frames}).
        nodes = [subschema(n, root) for n in nodes]
        nodes = [a for n in nodes for a in [n, *n.get("oneOf", []), *n.get("anyOf", [])]]
        nodes = [n["properties"][part] for n in nodes if part in n.get("properties", {})]
    return bool(path and nodes)


def _implied(quantization: dict) -> dict:
    """The switches the resolver derives from accuracy_level (and whatever else it uses)."""
    data = {"quantization": {k: v for k, v in quantization.items() if k not in SWITCHES}}
    expand_accuracy_level(data, Located({}))
    return {k: data["quantization"][k] for k in SWITCHES}


def _on(quantization: dict) -> tuple[bool, bool, bool]:
    """The three switches as TIDL sees them: on or off."""
    return (
        quantization["activation_clipping"] != "minmax",
        quantization["weight_clipping"] != "none",
        quantization["bias_calibration"] is not False,
    )


def _defaults(device: str | None) -> dict:
    """Schema defaults under the device preset: what an imported recipe need not repeat."""
    preset = load_yaml(presets_dir() / "devices" / f"{device}.yaml").data if device else {}
    base = {"calibration": {"preprocess": {}}, "quantization": preset.get("quantization", {})}
    return fill_defaults(base, recipe_schema())


def _device(value: Any) -> str | None:
    return DEVICE_NAMES.get(str(value).strip().lower()) if value else None


def _relative(path: str, base: Path, out_dir: Path) -> str:
    """`path` (relative to `base`) as written in a file in `out_dir`."""
    full = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    return Path(os.path.relpath(full, out_dir)).as_posix()


def _flow(value: Any) -> Any:
    """Mappings and lists in YAML flow style ({a: 1}, [1, 2])."""
    if isinstance(value, dict):
        out: Any = CommentedMap((k, _flow(v)) for k, v in value.items())
    elif isinstance(value, list):
        out = CommentedSeq(_flow(v) for v in value)
    else:
        return value
    out.fa.set_flow_style()
    return out


def _block(value: dict, flow: tuple[str, ...] = ()) -> CommentedMap:
    """Block-style mappings, with lists and the mappings under the keys in `flow` flow style."""
    return CommentedMap(
        (k, _flow(v) if isinstance(v, list) or k in flow else _block(v, flow))
        if isinstance(v, (dict, list))
        else (k, v)
        for k, v in value.items()
    )


def _dump(data: Any) -> str:
    yaml = YAML(typ="rt", pure=True)
    yaml.width = 100
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Import


def read_config(file: Path) -> dict:
    """A TIDL options dict or an edgeai config, from JSON or YAML (loaded safely)."""
    name = str(file)
    text = read_utf8(Path(file), RecipeError, "config")
    try:
        data = (
            json.loads(text) if name.endswith(".json") else YAML(typ="safe", pure=True).load(text)
        )
    except (json.JSONDecodeError, YAMLError) as err:
        first = str(err).strip().splitlines()[0]
        raise RecipeError(
            f"not valid {'JSON' if name.endswith('.json') else 'YAML'}: {first}", name
        ) from None
    if not isinstance(data, dict):
        raise RecipeError(
            "document: not a mapping; give a TIDL runtime-options dict (tensor_bits, "
            "accuracy_level, ...) or an edgeai-benchmark config (preprocess, session, ...)",
            name,
        )
    return data


@dataclass
class Skipped:
    """An option left out of the recipe, and why."""

    key: str
    value: Any
    reason: str


@dataclass
class Imported:
    """A recipe made from a TIDL / edgeai config, and what could not be carried over."""

    recipe: dict
    source: str
    kind: str
    skipped: list[Skipped] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # keys with no effect on quantization
    defaults: list[str] = field(default_factory=list)  # TIDL defaults used for absent options
    notes: list[str] = field(default_factory=list)  # other warnings

    @property
    def warnings(self) -> list[str]:
        """One line per option not imported, then the other notes."""
        lines = [f"{s.key}: not imported ({s.reason})" for s in self.skipped] + self.notes
        return [f"{self.source}: {line}" for line in lines]


def _canonical(row: Option, value: Any, source: str) -> Any:
    try:
        return row.codec.tidl(value)
    except ValueError as err:
        raise RecipeError(f"{row.key}: {value!r} is not valid; {err}", source) from None


def _unknown(key: str, value: Any, known: list[str], out: Imported) -> None:
    hint = closest(key, known)
    out.skipped.append(
        Skipped(key, value, f"unknown option; did you mean {hint!r}?" if hint else "unknown option")
    )


def _runtime_options(raw: dict, device: str | None, out: Imported) -> dict:
    """The runtime options checked, in canonical form, with TIDL's defaults for absent ones."""
    rows = {row.key: row for row in OPTIONS}
    options: dict = {}
    for key, value in raw.items():
        family = next((f for f in OPTION_FAMILIES if str(key).startswith(f)), None)
        if key == SCALE_TYPE and value in (3, "3"):
            out.skipped.append(Skipped(key, value, "TFLite pre-quantized models are not ONNX"))
        elif key in rows:
            options[key] = _canonical(rows[key], value, out.source)
        elif family:
            out.skipped.append(Skipped(key, value, OPTION_FAMILIES[family]))
        elif key in IGNORED_OPTIONS:
            out.ignored.append(key)
        else:
            _unknown(str(key), value, [*rows, *sorted(IGNORED_OPTIONS)], out)
    # Without a scale type, edgeai-benchmark's device preset (or TIDL's default 0) applies.
    options.setdefault(SCALE_TYPE, DEVICE_SCALE_TYPE.get(device, 0) if device is not None else 0)
    if device == "tda4vm" and options[SCALE_TYPE] == 4:
        out.notes.append(f"{SCALE_TYPE}: TDA4VM has no type 4; TIDL uses 1 there, as imported")
        options[SCALE_TYPE] = 1
    for row in OPTIONS:
        if row.key not in options and row.default is not None:
            options[row.key] = row.default
            if row.always and row.read(options):
                out.defaults.append(f"{row.key} {row.default}")
    return options


def _quantization(options: dict, given: set, device: str | None, out: Imported) -> tuple:
    """The quantization section and the calibration frame limit, from canonical TIDL options."""
    flat: dict[Field, Any] = {}
    for row in OPTIONS:
        value = options.get(row.key)
        if not row.read(options):
            if row.key in given and value != row.default:
                out.skipped.append(Skipped(row.key, value, row.read_when))
            continue
        if not row.always and value == row.default:
            continue
        if not row.always and not (row.fields and all(map(_has_field, row.fields))):
            why = f"{row.what}; no recipe field yet" if row.fields else row.what
            out.skipped.append(Skipped(row.key, value, why))
            continue
        meaning = row.codec.decode(value)
        flat.update(zip(row.fields, meaning if len(row.fields) > 1 else (meaning,)))

    # Write only what differs from the device preset and the schema defaults.
    base = _defaults(device)["quantization"]
    q: dict = {}
    for name in ("bits", LEVEL, "scale", "activations"):
        if flat.get(QUANTIZATION + (name,), base[name]) != base[name]:
            q[name] = flat[QUANTIZATION + (name,)]
    per_channel = flat.get(
        QUANTIZATION + ("weights", "per_channel"), base["weights"]["per_channel"]
    )
    if per_channel != base["weights"]["per_channel"]:
        q["weights"] = {"per_channel": per_channel}
    core = {"bits", LEVEL, "scale", "activations", "weights", *SWITCHES}
    for path, value in flat.items():  # options whose field the schema gained
        if path[0] == "quantization" and path[1] not in core:
            _set(q, path[1:], value)
    # accuracy_level alone when the switches are what it implies; else all three spelled out.
    implied = _implied({**base, **q})
    switches = {k: flat.get(QUANTIZATION + (k,), implied[k]) for k in SWITCHES}
    if _on(switches) != _on(implied):
        q.update(switches)
    if switches["bias_calibration"] is not False:
        counts = {k: flat.get(QUANTIZATION + ("bias_calibration", k)) for k in BIAS_CALIBRATION}
        extra = {k: v for k, v in counts.items() if v not in (None, BIAS_CALIBRATION[k])}
        if extra:
            q["bias_calibration"] = extra
    return q, flat.get(("calibration", "data", "limit"))


def _preprocess(config: dict, out: Imported) -> dict:
    """calibration.preprocess from an edgeai config's preprocess and session sections."""
    pre = dict(config.get("preprocess") or {})
    session = config.get("session") or {}
    pre.setdefault("data_layout", session.get("input_data_layout"))
    if pre.get("backend") == "cv2" and isinstance(pre.get("interpolation"), int):
        pre["interpolation"] = CV2_INTERPOLATION.get(pre["interpolation"], pre["interpolation"])
    # edgeai-tidl-tools' param.yaml keeps mean/scale in preprocess, the modelzoo in session.
    section = {"input_mean": pre.get("mean"), "input_scale": pre.get("scale"), **session}
    values = {"preprocess": pre, "session": section}
    defaults = _defaults(None)["calibration"]["preprocess"]
    result: dict = {}
    for row in PREPROCESS:
        value = _get(values, tuple(row.key.split(".")))
        if value is None:  # null: edgeai-benchmark's default, which is also quantbuild's
            continue
        if not row.fields:  # only quantbuild's own behaviour is accepted
            if not _accepts(row, value):
                out.skipped.append(Skipped(row.key, value, row.what))
            continue
        meaning = row.codec.decode(_canonical(row, value, out.source))
        name = row.fields[0][-1]
        if meaning is not None and meaning != defaults.get(name):
            result[name] = meaning
    return result


def _accepts(row: Option, value: Any) -> bool:
    try:
        row.codec.tidl(value)
    except ValueError:
        return False
    return True


def _check_keys(config: dict, out: Imported) -> None:
    """Sort an edgeai config's keys into read, ignored (no effect) and unknown ones."""
    for section in ("preprocess", "session"):
        if not isinstance(config.get(section) or {}, dict):
            raise RecipeError(f"{section}: not a mapping; give key: value pairs", out.source)
    read = EDGEAI_READ | {row.key for row in PREPROCESS}
    known = sorted(read | EDGEAI_IGNORED)
    for key, value in config.items():
        nested = key in ("preprocess", "session") and isinstance(value, dict)
        for dotted, item in (
            [(f"{key}.{k}", v) for k, v in value.items()] if nested else [(key, value)]
        ):
            if dotted in EDGEAI_IGNORED:
                out.ignored.append(dotted)
            elif dotted not in read:
                _unknown(dotted, item, known, out)


def is_edgeai(config: dict) -> bool:
    """Whether a config is an edgeai-benchmark model config (else TIDL runtime options)."""
    return "session" in config or "preprocess" in config


def import_config(
    config: dict,
    *,
    source: str,
    out_dir: Path,
    device: str | None = None,
    model: str | None = None,
    data: str | None = None,
) -> Imported:
    """A recipe from TIDL runtime options or an edgeai-benchmark model config.

    Paths in the config are relative to the config's folder; `model` and `data` (calibration
    images folder or .npz/.npy) to the current folder. All are written relative to `out_dir`,
    where the recipe goes.
    """
    edgeai = is_edgeai(config)
    out = Imported({}, source, "edgeai-benchmark config" if edgeai else "TIDL runtime options")
    session: dict = {}
    if edgeai:
        _check_keys(config, out)
        session = config.get("session") or {}
        raw = session.get("runtime_options") or {}
        if not isinstance(raw, dict):
            raise RecipeError(
                "session.runtime_options: not a mapping; give key: value pairs", source
            )
        hints = [config.get("target_device"), session.get("target_device")]
    else:
        raw, hints = config, [config.get("platform")]
    hinted = next(filter(None, map(_device, hints)), None)
    if device and hinted and device != hinted:
        out.notes.append(f"the config is for {hinted}; using --device {device}")
    device = device or hinted

    options = _runtime_options(raw, device, out)
    quantization, limit = _quantization(options, set(raw), device, out)

    recipe: dict = {"version": 1}
    if device:
        recipe["extends"] = [f"devices/{device}"]
    model_path = model if model is not None else session.get("model_path")
    if model_path is None:
        out.notes.append("the config names no model: `model` is a placeholder; pass --model")
        model_path = "model.onnx"
    elif not isinstance(model_path, str):
        raise RecipeError(f"session.model_path: {model_path!r} is not valid; give a path", source)
    elif not model_path.endswith(".onnx"):
        out.notes.append(f"model {model_path} is not ONNX; quantbuild builds ONNX models")
    config_dir = Path(source).resolve().parent
    recipe["model"] = _relative(model_path, Path.cwd() if model else config_dir, out_dir)
    if data is None:
        out.notes.append("calibration data is a placeholder (data/calib); pass --data")
        dataset = {"images": "data/calib"}
    else:
        dataset = {"tensors" if data.endswith((".npz", ".npy")) else "images": data}
        dataset = {k: _relative(v, Path.cwd(), out_dir) for k, v in dataset.items()}
    if limit is not None:
        dataset["limit"] = limit
    recipe["calibration"] = {"data": dataset}
    preprocess = _preprocess(config, out) if edgeai else {}
    if preprocess:
        recipe["calibration"]["preprocess"] = preprocess
    for path in PATH_FIELDS:  # a ranges file is relative to the config, like the model
        value = _get(quantization, path[1:]) if path[0] == "quantization" else None
        if value is not None:
            _set(quantization, path[1:], _relative(value, config_dir, out_dir))
    if quantization:
        recipe["quantization"] = quantization

    problem = next(Draft202012Validator(recipe_schema()).iter_errors(recipe), None)
    if problem is not None:  # a bug in this module, not in the user's file
        raise AssertionError(f"imported recipe does not validate: {problem.message}")
    out.recipe = recipe
    return out


def render_recipe(imported: Imported) -> str:
    """Recipe YAML with a header naming the source and a block of what was not imported."""
    recipe = imported.recipe
    doc = _block(recipe, flow=("data", *recipe.get("quantization", {})))
    head = [f"Imported from {imported.source} ({imported.kind}) by quantbuild import-config."]
    if imported.defaults:
        head.append(f"TIDL defaults for options it does not set: {', '.join(imported.defaults)}.")
    head += [f"Note: {note}." for note in imported.notes]
    tail = []
    if imported.skipped:
        tail.append("not imported:")
        tail += [f"  {s.key}: {json.dumps(s.value)}  ({s.reason})" for s in imported.skipped]
    if imported.ignored:
        tail.append(f"ignored (no effect on quantization): {', '.join(imported.ignored)}")
    return _comment(head) + _dump(doc) + _comment(tail)


def _comment(lines: list[str]) -> str:
    wrapped = (
        textwrap.wrap(line, 96, subsequent_indent="    ", break_on_hyphens=False) or [""]
        for line in lines
    )
    return "".join(f"# {part}\n" for parts in wrapped for part in parts)


# ---------------------------------------------------------------------------------------------
# Export


def _recipe_value(data: dict, row: Option) -> Any:
    values = tuple(_get(data, path) for path in row.fields)
    return values if len(values) > 1 else values[0]


def export_options(data: dict) -> tuple[dict, list[str]]:
    """TIDL runtime options for a resolved recipe, and what they cannot say exactly."""
    q = data["quantization"]
    warnings: list[str] = []
    encoded: dict = {}
    for row in OPTIONS:
        if not (row.fields and all(map(_has_field, row.fields))):
            continue
        value = _recipe_value(data, row)
        if value is None:
            continue
        encoded[row.key], why = row.codec.encode(value)
        if why:
            name = ".".join(row.fields[0]) if len(row.fields) == 1 else row.key
            warnings.append(f"{name}: {why}")
    # TIDL reads the switches and channel-wise weights only at accuracy_level 9.
    channel_wise = q["weights"]["per_channel"] and encoded[SCALE_TYPE] in (0, 1)
    if encoded[LEVEL] != 9 and (_on(q) != _on(_implied(q)) or channel_wise):
        if encoded[LEVEL] == 0 and q["scale"] != "power_of_2":
            warnings.append(
                "quantization.accuracy_level: 0 written as 9 to carry the switches; TIDL's "
                "level 9 does not force power-of-2 feature maps as level 0 does"
            )
        encoded[LEVEL] = 9
    if data.get("device") == "tda4vm" and encoded[SCALE_TYPE] == 4:
        warnings.append(f"{SCALE_TYPE}: TIDL downgrades 4 to 1 (power-of-2) on TDA4VM")
    if q["activation_clipping"] == "percentile" and q["percentile"] != 99.99:
        warnings.append(f"quantization.percentile: TIDL keeps 99.99, not {q['percentile']}")
    if q["bias_bits"] != (16 if data.get("device") == "tda4vm" else 32):
        warnings.append(
            f"quantization.bias_bits: {q['bias_bits']} is set by the device in TIDL "
            "(16 bits on TDA4VM, 32 elsewhere)"
        )
    if q.get("weight_rounding", "nearest") != "nearest":
        warnings.append(
            "quantization.weight_rounding: not a TIDL option; TIDL rounds the float weights to "
            "nearest itself, so the GPTQ integers (model.qdq.onnx) are not carried over"
        )
    if "latency_table" in q["mixed_precision"]:
        warnings.append(
            "quantization.mixed_precision.latency_table: not a TIDL option; it only shapes "
            "quantbuild's choice of 16-bit layers (the lists exported here)"
        )
    if "max_drop" in q["mixed_precision"]:
        warnings.append(
            "quantization.mixed_precision.max_drop: not a TIDL option; give TIDL the layers it "
            "chose (build/<recipe>/selection.json 'chosen', or precision.json) as "
            "output_feature_16bit_names_list / params_16bit_names_list"
        )
    if q.get("equalization"):
        warnings.append(
            "quantization.equalization: not a TIDL option; where it rescaled the model (the "
            "equalize stage logs how many tensors), give TIDL build/<recipe>/model.float.onnx "
            "(with quant_params.prototxt for the same ranges)"
        )
    options = {}
    for row in OPTIONS:
        value = encoded.get(row.key)
        if value is not None and row.read(encoded) and (row.always or value != row.default):
            options[row.key] = value
    return options, warnings


def export_edgeai(data: dict, model_path: str) -> tuple[dict, list[str]]:
    """An edgeai-benchmark model config for a resolved recipe, and what it cannot say."""
    options, warnings = export_options(data)
    recipe_pre = data["calibration"].get("preprocess", {})
    values: dict = {}
    for row in PREPROCESS:
        if row.fields:
            value, why = row.codec.encode(recipe_pre.get(row.fields[0][-1]))
            if why:
                warnings.append(f"{'.'.join(row.fields[0])}: {why}")
        else:
            value = row.default
        _set(values, tuple(row.key.split(".")), value)
    if "pad" in recipe_pre:
        warnings.append("calibration.preprocess.pad: edgeai-benchmark has no padding after crop")
    session = {
        "session_name": "onnxrt",
        "model_path": model_path,
        "input_mean": values["session"]["input_mean"],
        "input_scale": values["session"]["input_scale"],
        "input_optimization": False,
        "input_data_layout": values["preprocess"]["data_layout"],
        "target_device": data["device"].upper() if data.get("device") else None,
        "runtime_options": options,
    }
    config: dict = {}
    if "top1" in (data.get("evaluation") or {}).get("metrics", []):
        config["task_type"] = "classification"
    return {**config, "preprocess": values["preprocess"], "session": session}, warnings


def export_config(data: dict, fmt: str, *, out_dir: Path, source: str) -> tuple[str, list[str]]:
    """The text of TIDL options JSON (`tidl`) or an edgeai-benchmark config YAML (`edgeai`)."""
    if fmt == "tidl":
        options, warnings = export_options(data)
        return json.dumps(options, indent=2) + "\n", warnings
    model = Path(os.path.relpath(data["model"], out_dir)).as_posix()
    config, warnings = export_edgeai(data, model)
    head = f"# edgeai-benchmark model config exported from {source} by quantbuild export-config.\n"
    return head + _dump(_block(config)), warnings
