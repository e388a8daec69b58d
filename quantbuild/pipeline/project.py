"""A recipe project: a folder with doit.cfg, its recipes, its settings and its store."""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from quantbuild.errors import QuantbuildError, RecipeError
from quantbuild.recipe import Recipe, load_recipe
from quantbuild.recipe.validate import RecipeErrors
from quantbuild.store.entries import OWN_STORE_HINT, Store
from quantbuild.store.keys import FileHasher
from quantbuild.store.remote import RemoteStore, is_url

if TYPE_CHECKING:
    from quantbuild.data.dataset import Dataset
    from quantbuild.pipeline.cluster import Cluster

CONFIG = "doit.cfg"
STATE = ".quantbuild"
DEFAULTS = {
    "recipes": "*.yaml *.yml",
    "out": "build",
    "store": f"{STATE}/store",
    "store_readonly": "false",
    "store_key_file": "",
    "store_signed": "false",
    "cluster": "",
}
READONLY_ENV = "QUANTBUILD_CACHE_READONLY"
CLUSTER_ENV = "QUANTBUILD_CLUSTER"
CACHE_ENV = "QUANTBUILD_STORE_CACHE"  # the local cache of a remote store
KEY_ENV = "QUANTBUILD_STORE_KEY"

CONFIG_TEXT = """\
# quantbuild project: `doit` (or `quantbuild build`) here builds every recipe.
[GLOBAL]
loader = quantbuild
dep_file = .quantbuild/doit.db
backend = sqlite3

[LOADER]
quantbuild = quantbuild.pipeline.loader:RecipeLoader

[quantbuild]
# Recipe files (globs, relative to this folder); bases kept elsewhere are found via extends.
recipes = *.yaml *.yml
# Where each recipe's results are copied: <out>/<recipe>/...
out = build
# Content-addressed artifact store: a folder, or a shared store's URL (s3://bucket/prefix or
# any fsspec URL, read through .quantbuild/store; docs/scale.md); QUANTBUILD_CACHE overrides it.
store = .quantbuild/store
# true: only read that store, build misses into .quantbuild/store (QUANTBUILD_CACHE_READONLY=1).
store_readonly = false
# A file holding the team's store key (or set QUANTBUILD_STORE_KEY): entries published here are
# signed with it. Keep it out of the repository (docs/cache.md, "Trust").
store_key_file =
# true: use only store entries signed with that key; others are rebuilt (with a warning).
# strict: others stop the build with an error (as `quantbuild build --strict` does).
store_signed = false
# A Dask scheduler (tcp://HOST:8786, or local:N) that runs the stages; empty: this process
# (QUANTBUILD_CLUSTER or `quantbuild build --cluster` override it; docs/scale.md).
cluster =
"""


def read_settings(root: Path) -> dict[str, str]:
    """The [quantbuild] section of doit.cfg over the defaults."""
    settings = dict(DEFAULTS)
    config_file = root / CONFIG
    if config_file.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(config_file, encoding="utf-8")
        except configparser.Error as err:
            raise RecipeError(
                f"invalid config: {str(err).splitlines()[0]}", str(config_file)
            ) from None
        if parser.has_section("quantbuild"):
            for key, value in parser.items("quantbuild"):
                if key not in DEFAULTS:
                    raise RecipeError(
                        f"[quantbuild] {key}: unknown setting; known: {', '.join(DEFAULTS)}",
                        str(config_file),
                    )
                settings[key] = value.strip()
    return settings


def _flag(value: str, name: str, where: str | None = None) -> bool:
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise RecipeError(f"{name}: {value!r} is not a boolean; use true or false (1 or 0)", where)


@dataclass
class Project:
    """Everything a build needs to know about a project folder."""

    root: Path
    overrides: tuple[str, ...] = ()
    strict: bool = False  # `build --strict`: as if store_signed = strict
    cluster_address: str | None = None  # `build --cluster`; None: the `cluster` setting
    # The store as a cluster's client resolved it (a worker uses the client's, not its own
    # environment's); None: QUANTBUILD_CACHE / QUANTBUILD_CACHE_READONLY and the settings.
    store_location: str | None = None
    store_read_only: bool | None = None
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.settings = read_settings(self.root)
        location = self.store_location or (
            os.environ.get("QUANTBUILD_CACHE") or self.settings["store"]
        )
        self.store_location = location
        local = (self.root / DEFAULTS["store"]).resolve()
        key = self.store_key()
        signed = self.store_signed(key)
        strict = signed == "strict"
        store_root = local if is_url(location) else (self.root / location).resolve()
        if is_url(location):
            # A remote store (S3, any fsspec URL) is read through a local one: the project's
            # own, or QUANTBUILD_STORE_CACHE (one per machine, shared by its checkouts);
            # read-only (pull requests): misses are built locally and never uploaded.
            cache = os.environ.get(CACHE_ENV)
            store_root = (self.root / cache).resolve() if cache else local
            remote = RemoteStore(location, read_only=self.store_readonly())
            self.store = Store(
                store_root, key=key, require_signed=bool(signed), strict=strict, remote=remote
            )
        elif self.store_readonly() and store_root != local:
            # Pull-request CI: hits come from the shared store, misses are built locally.
            self.store = Store(
                local, read_only=store_root, key=key, require_signed=bool(signed), strict=strict
            )
        else:
            self.store = Store(store_root, key=key, require_signed=bool(signed), strict=strict)
        if self.store.root == local:
            self.store.hint = OWN_STORE_HINT
        self.out = (self.root / self.settings["out"]).resolve()
        self.state = self.root / STATE
        self.hasher = FileHasher(self.state / "filehashes.json")
        self._recipes: dict[str, Recipe] | None = None
        self.ignored: dict[Path, str] = {}  # YAML files matched by `recipes` that are not ones
        # datasets listed and digested in this command, shared by the recipes that name them
        self.datasets: dict[str, Dataset] = {}
        self.frame_digests: dict[str, str] = {}

    @cached_property
    def cluster(self) -> Cluster | None:
        """The Dask cluster stages run on (`--cluster`, QUANTBUILD_CLUSTER or the `cluster`
        setting), or None: stages run in this process."""
        address = self.cluster_address
        if address is None:
            address = os.environ.get(CLUSTER_ENV) or self.settings["cluster"]
        if not address.strip():
            return None
        from quantbuild.pipeline.cluster import Cluster

        return Cluster(address.strip())

    def store_readonly(self) -> bool:
        """QUANTBUILD_CACHE_READONLY when set, else the `store_readonly` setting."""
        if self.store_read_only is not None:
            return self.store_read_only
        value = os.environ.get(READONLY_ENV, "").strip()
        if value:
            return _flag(value, READONLY_ENV)
        return _flag(
            self.settings["store_readonly"], "[quantbuild] store_readonly", str(self.root / CONFIG)
        )

    def store_key(self) -> bytes | None:
        """The team's store key: QUANTBUILD_STORE_KEY, else the `store_key_file`'s content."""
        value = os.environ.get(KEY_ENV, "").strip()
        if value:
            return value.encode("utf-8")
        name = self.settings["store_key_file"]
        if not name:
            return None
        path = (self.root / os.path.expanduser(name)).resolve()
        try:
            key = path.read_bytes().strip()
        except OSError as err:
            raise RecipeError(
                f"[quantbuild] store_key_file: cannot read {path} ({err.strerror}); fix the path "
                f"or set {KEY_ENV}",
                str(self.root / CONFIG),
            ) from None
        if len(key) < 16:
            raise RecipeError(
                f"[quantbuild] store_key_file: {path} holds {len(key)} bytes; a key is at least "
                "16 (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)",
                str(self.root / CONFIG),
            )
        return key

    def store_signed(self, key: bytes | None) -> bool | str:
        """Whether only entries signed with the store `key` are used (`store_signed`): False,
        True (others are rebuilt, with a warning) or "strict" (others stop the build)."""
        where = str(self.root / CONFIG)
        value = self.settings["store_signed"]
        signed: bool | str
        if self.strict or value.strip().lower() == "strict":
            signed = "strict"
        else:
            try:
                signed = _flag(value, "[quantbuild] store_signed", where)
            except RecipeError:
                raise RecipeError(
                    f"[quantbuild] store_signed: {value!r} is not one of true, false, strict",
                    where,
                ) from None
        if signed and key is None:
            setting = "strict" if signed == "strict" else "true"
            what = (
                "quantbuild build --strict needs the store key"
                if self.strict
                else f"[quantbuild] store_signed is {setting} but there is no key"
            )
            raise RecipeError(f"{what}: set {KEY_ENV} or store_key_file", where)
        return signed

    def recipe_files(self) -> list[Path]:
        files: set[Path] = set()
        for pattern in self.settings["recipes"].split():
            files.update(p.resolve() for p in self.root.glob(pattern) if p.is_file())
        return sorted(files)

    def recipes(self) -> dict[str, Recipe]:
        """All recipes, loaded and validated; every broken recipe is reported at once.

        A matching YAML file that does not declare `version:` (e.g. an exported ranges.yaml
        copied here) is not a recipe: it is skipped and listed in `ignored`."""
        if self._recipes is None:
            loaded: dict[str, Recipe] = {}
            errors: list[QuantbuildError] = []
            for file in self.recipe_files():
                problem = _not_a_recipe(file)
                if problem:
                    self.ignored[file] = problem
                    continue
                try:
                    str(file).encode("utf-8")
                except UnicodeEncodeError:
                    errors.append(
                        RecipeError(
                            "the file name is not valid UTF-8 (task and store names must be); "
                            "rename the file",
                            repr(str(file)),
                        )
                    )
                    continue
                try:
                    recipe = load_recipe(file, self.overrides)
                except RecipeErrors as err:
                    errors.extend(err.errors)
                    continue
                except QuantbuildError as err:
                    errors.append(err)
                    continue
                if recipe.name in loaded:
                    errors.append(
                        RecipeError(
                            f"name {recipe.name!r} is also used by {loaded[recipe.name].file.name}; "
                            "rename one (field `name`)",
                            recipe.where(("name",)),
                        )
                    )
                    continue
                loaded[recipe.name] = recipe
            if errors:
                raise ProjectErrors(errors)
            self._recipes = loaded
        return self._recipes

    def find(self, ref: str) -> Recipe:
        """A recipe by name or file path."""
        recipes = self.recipes()
        if ref in recipes:
            return recipes[ref]
        path = Path(ref).resolve()
        for recipe in recipes.values():
            if recipe.file == path:
                return recipe
        known = ", ".join(recipes) or "none"
        raise RecipeError(f"no recipe named {ref!r} in {self.root}; recipes: {known}")


def _not_a_recipe(file: Path) -> str | None:
    """Why a YAML file matched by the recipe globs is not a recipe (None: it declares one)."""
    try:
        with open(file, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None  # let the loader report it
    if re.search(rb"^format\s*:\s*quantbuild-ranges/", head, re.MULTILINE):
        return "a quantbuild ranges file (import it with quantization.ranges.import)"
    keys = rb"(^|[{,]\s*)[\"']?(version|model|extends|quantization|calibration)[\"']?\s*:"
    if re.search(keys, head, re.MULTILINE):  # block style, or flow style / JSON
        return None  # a recipe, or a broken one: the loader says what is wrong
    return "no top-level recipe keys (version, model, extends, quantization, calibration)"


class ProjectErrors(QuantbuildError):
    """Errors from several recipes, one per mistake; the exit code is that of the first.

    Recipes that share a base file, an override or an inherited section (evaluation's
    preprocess is calibration's) meet the same mistake several times: an error with the same
    place and problem (the message after its field name) is reported once."""

    def __init__(self, errors: list[QuantbuildError]):
        seen: set[tuple[str, str]] = set()
        unique = []
        for error in errors:
            key = (str(error.where), error.message.split(": ", 1)[-1])
            if key not in seen:
                seen.add(key)
                unique.append(error)
        errors = unique
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
        self.exit_code = errors[0].exit_code

    def __str__(self) -> str:
        return self.message
