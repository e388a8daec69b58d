"""The `quantbuild` command: init, build, list, status, show, clean, cache, diagnose,
import-config, export-config and doctor (`quantbuild COMMAND --help` for each)."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from functools import partial
from pathlib import Path

from quantbuild import __version__
from quantbuild.errors import EXIT_BUILD_FAILED, EXIT_INTERNAL, QuantbuildError, RecipeError


def _project(args):
    from quantbuild.pipeline.project import Project

    return Project(
        Path(args.directory),
        tuple(args.set or ()),
        strict=getattr(args, "strict", False),
        cluster_address=getattr(args, "cluster", None),
    )


def cmd_init(args) -> int:
    from quantbuild.pipeline.project import CONFIG, CONFIG_TEXT

    target = Path(args.directory) / CONFIG
    if target.exists() and not args.force:
        raise RecipeError(f"{target} exists; use --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(CONFIG_TEXT, encoding="utf-8")
    print(
        f"wrote {target}: run `doit` or `quantbuild build` in {target.parent} to build its recipes"
    )
    return 0


def cmd_build(args) -> int:
    from doit.doit_cmd import DoitMain

    from quantbuild.pipeline import failures
    from quantbuild.pipeline.loader import RecipeLoader
    from quantbuild.pipeline.plan import Plan

    project = _project(args)
    plan = Plan(project, force=args.force)  # a bad recipe or dataset never starts a build
    for file, why in project.ignored.items():
        print(f"note: {file.name}: not a recipe ({why}); skipped", file=sys.stderr)
    targets = []
    for ref in args.recipes:
        name = project.find(ref).name
        targets += [f"{stage.name}:{name}" for stage in plan.builds[name].stages]
    doit_args = (
        ["run"]
        + (["--continue"] if args.keep_going else [])
        + (["--always-execute"] if args.force else [])
    )
    if project.cluster is not None:  # one client thread per worker thread: recipes at once
        doit_args += ["-n", str(project.cluster.threads), "-P", "thread"]
    try:
        code = DoitMain(RecipeLoader(plan=plan), config_filenames=()).run(doit_args + targets)
    finally:
        if project.cluster is not None:
            project.cluster.close()
    error = failures.first()  # also after a clean run: doit's state may not have been saved
    if error is not None:
        return error.exit_code
    if code in (0, 1):
        return code and EXIT_BUILD_FAILED
    return EXIT_INTERNAL if code == 2 else code


def cmd_list(args) -> int:
    from quantbuild.report.markdown import scheme_label

    project = _project(args)
    for name, recipe in project.recipes().items():
        q = recipe.data["quantization"]
        print(
            f"{name:24} {recipe.file.name:24} {recipe.data.get('device') or '-':8} {q['bits']:>2}-bit  {scheme_label(q)}"
        )
    if args.all:
        for file, why in project.ignored.items():
            print(f"{'(ignored)':24} {file.name:24} not a recipe: {why}")
    return 0


def cmd_status(args) -> int:
    from quantbuild.pipeline.plan import RecipeBuild
    from quantbuild.pipeline.status import recipe_status

    project = _project(args)
    recipes = (
        [project.find(r) for r in args.recipes]
        if args.recipes
        else list(project.recipes().values())
    )
    stale = False
    for recipe in recipes:
        print(f"{recipe.name}:")
        for status in recipe_status(RecipeBuild(project, recipe)):
            stale |= status.state != "up to date"
            print(f"  {status.stage:9} {status.state}")
            if args.why:
                for reason in status.reasons:
                    print(f"            {reason}")
    return 1 if stale and args.check else 0


def cmd_show(args) -> int:
    from quantbuild.recipe.show import resolved_yaml

    project = _project(args)
    recipe = project.find(args.recipe)
    if args.resolved:
        sys.stdout.write(resolved_yaml(recipe))
        return 0
    from quantbuild.pipeline.plan import RecipeBuild
    from quantbuild.stages.quantize import PRECISION

    build = RecipeBuild(project, recipe)
    print(f"recipe   {recipe.name} ({recipe.file})")
    print(f"results  {build.export_dir()}")
    for stage in build.stages:
        entry = build.entry(stage.name)
        where = entry.dir if entry else "not built"
        print(f"{stage.name:9}{where}")
    quantized = build.entry("quantize")
    if quantized is not None and quantized.path(PRECISION).is_file():
        _print_precision(json.loads(quantized.path(PRECISION).read_text(encoding="utf-8")))
    return 0


def _print_precision(precision: dict) -> None:
    """The per-layer precision table: 16-bit layers listed, the rest counted."""
    rows = precision["layers"]
    wide = [r for r in rows if r["output_bits"] == 16 or r.get("weight_bits") == 16]
    latency = precision.get("latency") or {}
    ratio = f"; estimated T_MP / T_8 = {latency['ratio']:.3f}" if latency.get("t8") else ""
    print(f"precision {len(wide)} of {len(rows)} layers with 16-bit outputs or weights{ratio}")
    if 0 < len(wide) < len(rows):
        print(f"  {'layer':32} {'op':20} {'output':>6} {'weights':>7}  why")
        for r in wide:
            weights = r.get("weight_bits") or "-"
            print(f"  {r['layer']:32} {r['op']:20} {r['output_bits']:>6} {weights:>7}  {r['why']}")


def cmd_clean(args) -> int:
    project = _project(args)
    names = (
        [project.find(r).name for r in args.recipes] if args.recipes else list(project.recipes())
    )
    from quantbuild.pipeline.diagnose import steps

    for name in names:  # the recipe's results and the variants `diagnose` built of it
        for folder in [name] + [f"{name}.{step.name}" for step in steps(1.2)]:
            shutil.rmtree(project.out / folder, ignore_errors=True)
    if not args.recipes:
        from quantbuild.report.assemble import REPORTS

        for report in REPORTS:
            (project.out / report).unlink(missing_ok=True)
        (project.state / "doit.db").unlink(missing_ok=True)
    if args.store:
        project.store.remove()
    print(f"cleaned {', '.join(names) or 'nothing'}" + (" and the store" if args.store else ""))
    return 0


def cmd_cache(args) -> int:
    from quantbuild.pipeline import store_admin as cache

    for flag, action in (("fix", "verify"), ("keep_days", "gc"), ("dry_run", "gc")):
        if getattr(args, flag) and args.action != action:
            option = "--" + flag.replace("_", "-")
            raise RecipeError(f"{option} applies to `quantbuild cache {action}` only")
    project = _project(args)
    if args.action == "ls":
        cache.ls(project)
    elif args.action == "verify":
        cache.verify(project, fix=args.fix)
    else:
        cache.gc(project, keep_days=args.keep_days or 0.0, dry_run=args.dry_run)
    return 0


def cmd_import_config(args) -> int:
    from quantbuild.interop.tidl_config import import_config, read_config, render_recipe

    out = Path(args.output) if args.output else None
    imported = import_config(
        read_config(Path(args.file)),
        source=args.file,
        out_dir=(out.parent if out else Path(".")).resolve(),
        device=args.device,
        model=args.model,
        data=args.data,
    )
    for line in imported.warnings:
        print(f"warning: {line}", file=sys.stderr)
    _write_output(render_recipe(imported), out)
    return 0


def cmd_export_config(args) -> int:
    from quantbuild.interop.tidl_config import export_config
    from quantbuild.recipe import load_recipe

    out = Path(args.output) if args.output else None
    fmt = args.format or ("edgeai" if out and out.suffix in (".yaml", ".yml") else "tidl")
    ref = Path(args.recipe)
    if ref.is_file():
        recipe = load_recipe(ref, tuple(args.set or ()))
    else:
        recipe = _project(args).find(args.recipe)
    out_dir = (out.parent if out else Path(".")).resolve()
    text, warnings = export_config(recipe.data, fmt, out_dir=out_dir, source=args.recipe)
    for line in warnings:
        print(f"warning: {args.recipe}: {line}", file=sys.stderr)
    _write_output(text, out)
    return 0


def cmd_doctor(args) -> int:
    from quantbuild.doctor import check_model, check_recipe
    from quantbuild.doctor.render import render_json, render_text

    target = Path(args.target)
    if target.suffix.lower() == ".onnx" or (
        target.is_file() and target.suffix.lower() not in (".yaml", ".yml")
    ):
        report = check_model(target)
    else:
        from quantbuild.pipeline.plan import RecipeBuild
        from quantbuild.stages.stats import STATS

        project = _project(args)
        build = RecipeBuild(project, project.find(args.target))

        def statistics() -> Path:
            """Build (or reuse) the stages up to `stats`; the statistics file."""
            for stage in build.stages:
                entry, _ = build.run(stage.name, log=partial(_stderr, f"{stage.name}: "))
                if stage.name == "stats":
                    return entry.path(STATS)
            raise AssertionError("every recipe builds stats")

        report = check_recipe(build.recipe, statistics)
    sys.stdout.write(render_json(report) if args.json else render_text(report, args.all))
    return 0  # findings are a diagnosis, not a failure


def cmd_diagnose(args) -> int:
    from quantbuild.pipeline.diagnose import diagnose, render_json, render_text

    result = diagnose(
        _project(args), args.recipe, args.factor, log=lambda line: print(line, file=sys.stderr)
    )
    sys.stdout.write(render_json(result) if args.json else render_text(result))
    return 0


def _stderr(prefix: str, line: str) -> None:
    print(prefix + line, file=sys.stderr)


def _write_output(text: str, out: Path | None) -> None:
    """`text` to the file `out`, or to stdout."""
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="quantbuild", description=__doc__)
    top.add_argument("--version", action="version", version=f"quantbuild {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-C", "--directory", default=".", help="project folder (default: .)")
        p.set_defaults(func=func)
        return p

    def overrides(p):
        p.add_argument(
            "-S",
            "--set",
            action="append",
            metavar="PATH=VALUE",
            help="override a recipe field, e.g. -S quantization.bits=16 (repeatable)",
        )

    p = add("init", cmd_init, "write doit.cfg so that `doit` builds the recipes in a folder")
    p.add_argument("--force", action="store_true", help="overwrite an existing doit.cfg")
    p = add("build", cmd_build, "build recipes (all by default) and the report")
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe names or files")
    p.add_argument(
        "-k", "--keep-going", action="store_true", help="build other recipes after a failure"
    )
    p.add_argument("--force", action="store_true", help="run every stage even if up to date")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at a store entry that is unsigned or wrongly signed (needs the store key)",
    )
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run the stages on a Dask cluster: tcp://HOST:8786, or local[:N] to start N "
        "workers here (docs/scale.md)",
    )
    overrides(p)
    p = add("list", cmd_list, "list the recipes of the project")
    p.add_argument(
        "--all", action="store_true", help="also list YAML files matched but not recipes"
    )
    overrides(p)
    p = add("status", cmd_status, "show which stages are out of date")
    p.add_argument("recipes", nargs="*", metavar="RECIPE")
    p.add_argument(
        "--why",
        action="store_true",
        help="name the fields and inputs that changed since the last build",
    )
    p.add_argument("--check", action="store_true", help="exit 1 when anything is out of date")
    overrides(p)
    p = add("show", cmd_show, "show a recipe's artifacts, or with --resolved the final recipe")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument(
        "--resolved",
        action="store_true",
        help="print the final recipe with where each value came from",
    )
    overrides(p)
    p = add("clean", cmd_clean, "remove exported results (and with --store the artifact store)")
    p.add_argument("recipes", nargs="*", metavar="RECIPE")
    p.add_argument("--store", action="store_true", help="also delete the whole artifact store")
    overrides(p)
    p = add("cache", cmd_cache, "list, verify or garbage-collect the artifact store")
    p.add_argument("action", choices=["ls", "verify", "gc"], help="what to do")
    p.add_argument("--fix", action="store_true", help="verify: remove bad entries")
    p.add_argument(
        "--keep-days",
        type=float,
        metavar="N",
        help="gc: keep unused entries used within the last N days",
    )
    p.add_argument("--dry-run", action="store_true", help="gc: only list what would be removed")
    overrides(p)
    p = add(
        "diagnose",
        cmd_diagnose,
        "TI's workflow in one build: 16-bit, 8-bit and mixed precision vs float, with a verdict",
    )
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument(
        "--factor",
        type=float,
        default=1.2,
        help="mixed_precision_factor of the mixed-precision step (T_MP / T_8, default 1.2)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    overrides(p)
    p = add(
        "import-config", cmd_import_config, "write a recipe from TIDL / edgeai-benchmark options"
    )
    p.add_argument("file", metavar="FILE", help="TIDL runtime options (JSON/YAML) or edgeai config")
    p.add_argument(
        "-o", "--output", metavar="RECIPE", help="recipe file to write (default: stdout)"
    )
    p.add_argument(
        "--device",
        choices=["tda4vm", "am62a", "am67a", "am68a", "am69a"],
        help="device preset to extend (default: a device the config names)",
    )
    p.add_argument("--model", help="ONNX model (default: the config's session.model_path)")
    p.add_argument("--data", help="calibration images folder or .npz/.npy (default: data/calib)")
    p = add(
        "export-config", cmd_export_config, "write TIDL options or an edgeai config for a recipe"
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe file or name")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")
    p.add_argument(
        "--format",
        choices=["tidl", "edgeai"],
        help="tidl: runtime options JSON; edgeai: edgeai-benchmark config YAML "
        "(default: from the -o suffix, else tidl)",
    )
    overrides(p)
    p = add(
        "doctor",
        cmd_doctor,
        "check a float model (or a recipe's model and calibration statistics) against TI's "
        "quantization guidelines",
    )
    p.add_argument("target", metavar="MODEL|RECIPE", help="an .onnx file, or a recipe name or file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="list every finding (default: 10 per check)")
    overrides(p)
    return top


def _terminate(signum, frame):
    # Unwind like Ctrl-C so half-written store entries and temporary files are removed.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    global _interrupted
    _interrupted = False
    if argv is None and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)  # (not when ignored: `quantbuild build &`)
    if argv is None and hasattr(signal, "SIGPIPE"):
        # `quantbuild build | head -1`: end quietly when the reader goes away, as cat does
        # (exit status 141 from the shell); store entries are published atomically.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return args.func(args)
    except QuantbuildError as err:
        print(f"error: {err}".replace("\n", "\nerror: "), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        if not _interrupted:
            raise
        # Ctrl-C inside a C extension's import or call can surface as another exception
        # (onnxruntime: "ImportError: initialization failed"): still an interruption.
        print("interrupted", file=sys.stderr)
        return 130


_interrupted = False


def _interrupt(signum, frame):
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
