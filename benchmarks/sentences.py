"""Sentence sets for the text transformer (all-MiniLM-L6-v2): tokenized sentences, tuning and held-out.

Tuning set: the Python language reference as the standard library ships it (pydoc_data.topics,
the text `help()` shows: statements, data model, built-in types). Held-out set: another source
and register, the docstrings of scipy and scikit-image (pinned in requirements.txt; read from
their source files with ast, nothing imported), their summaries, extended summaries and Notes
sections: prose about statistics, signal and image processing. Parameter lists, examples,
references and See Also sections are left out.

From either text: paragraphs of unindented lines (code, grammar rules, tables and math are
indented, ruled or directives, and dropped), cut into sentences at '.', '!' or '?' followed by
a capital letter; a sentence is kept when it has 40-400 characters, starts with a capital
letter, ends with '.', and is mostly words (no '>>>', '::=', '|' or '==', at least 80 % letters
and spaces). Duplicates are dropped. The set's sentences are shuffled with its seed; evaluation
takes them from the front and calibration from the back, so the two never share a sentence
and sets of other sizes share their first frames.

A frame is one sentence, batch 1, no padding: one uncompressed .npz with input_ids,
attention_mask (all ones) and token_type_ids (zeros), int64 [1, tokens], from the model's
tokenizer.json ([CLS] ... [SEP], lower case, WordPiece, at most 128 tokens). Layout:
work/data/minilm-<eval>/ (tuning) or minilm-heldout-<eval>/: eval/<i>.npz, calib_<N>/<i>.npz,
sentences.json ({"eval/0000.npz": sentence, ...}).

    python benchmarks/sentences.py --work benchmarks/work [--eval 200] [--calib 64] [--held-out]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
from functools import cache
from pathlib import Path

import numpy as np

import minilm
from common import list_frames, package_dir, write_json

VERSION = 1  # bump when the sentences or their frames change: cached sets are re-made
MODELS = ("minilm",)
SEEDS = {"tuning": 15015, "heldout": 16016}  # no other set of the harness uses these
MIN_CHARS, MAX_CHARS = 40, 400
MIN_WORDY = 0.8  # share of letters and spaces a kept sentence has at least
CODE_MARKS = (">>>", "::=", "|", "==", "\\", "->", "{", "}", "[", "]")
# scipy and scikit-image modules whose docstrings make the held-out text (relative to the package)
SCIPY_MODULES = ["cluster/hierarchy", "integrate/_quadpack_py", "interpolate/_interpolate"]
SCIPY_MODULES += ["linalg/_basic", "ndimage/_filters", "optimize/_optimize", "signal/_signaltools"]
SCIPY_MODULES += ["spatial/_kdtree", "stats/_morestats", "stats/_stats_py"]
SKIMAGE_MODULES = ["exposure/exposure", "feature/corner", "filters/_gaussian"]
SKIMAGE_MODULES += ["measure/_regionprops", "morphology/gray", "restoration/_denoise"]
SKIMAGE_MODULES += ["segmentation/_watershed", "transform/_warps"]
# numpydoc sections whose text is kept; the part before the first section (summary and extended
# summary) is always kept
PROSE_SECTIONS = {"Notes"}
SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
HEADING_RULE = re.compile(r"^\s*([-=*~^\"#+])\1{2,}\s*$")


# -- text ---------------------------------------------------------------------------------------
def paragraphs(text: str) -> list[str]:
    """Blocks of unindented lines, each joined into one line; a block with an indented line, a
    table rule or a heading underline, or starting with a directive, is dropped."""
    found = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.strip("\n").splitlines()]
        if not lines or any(line[:1].isspace() or HEADING_RULE.match(line) for line in lines):
            continue
        if lines[0].startswith(("..", "+", "|", "*", "-", ">>>")):
            continue
        found.append(" ".join(line.strip() for line in lines))
    return found


def clean(paragraph: str) -> str:
    """reST roles, literals and emphasis to plain words (:func:`x`, ``x``, *x* -> x), footnote
    marks ([1]) dropped, spaces collapsed."""
    paragraph = re.sub(r":[a-z]+(:[a-z]+)?:`~?([^`]+)`", r"\2", paragraph)
    paragraph = re.sub(r"`+([^`]+)`+_?", r"\1", paragraph)
    paragraph = re.sub(r"\s*\[\d+\]_?", "", paragraph)
    paragraph = re.sub(r"\s*\(\s*[,\s]*\)", "", paragraph)  # what a dropped citation leaves
    paragraph = re.sub(r"\*+([^*\s][^*]*?)\*+", r"\1", paragraph)  # *emphasis*, **PEP 8**
    return re.sub(r"\s+", " ", paragraph).strip()


def keep(sentence: str) -> bool:
    if not MIN_CHARS <= len(sentence) <= MAX_CHARS:
        return False
    if not (sentence[0].isupper() and sentence.endswith(".") and not sentence.endswith("..")):
        return False
    if any(mark in sentence for mark in CODE_MARKS):
        return False
    wordy = sum(c.isalpha() or c == " " for c in sentence)
    return wordy >= MIN_WORDY * len(sentence)


def sentences_of(texts: list[str]) -> list[str]:
    """The kept sentences of texts, in order, each once."""
    found: dict[str, None] = {}
    for text in texts:
        for paragraph in paragraphs(text):
            for sentence in SPLIT.split(clean(paragraph)):
                if keep(sentence):
                    found.setdefault(sentence)
    return list(found)


def numpydoc_prose(doc: str) -> str:
    """The summary, extended summary and PROSE_SECTIONS of a numpydoc docstring (a section
    is a title line underlined with dashes)."""
    lines, kept, section = doc.splitlines(), [], None
    for i, line in enumerate(lines):
        below = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", below.strip()):
            section = line.strip()
            continue
        if re.fullmatch(r"-{3,}", line.strip()):
            continue
        if section is None or section in PROSE_SECTIONS:
            kept.append(line)
    return "\n".join(kept)


def docstrings(path: Path) -> list[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [
        n for n in ast.walk(tree) if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
    ]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    return [doc for n in nodes if (doc := ast.get_docstring(n))]


@cache
def material(held_out: bool) -> tuple[str, ...]:
    """Every kept sentence of the set's source, in source order."""
    if not held_out:
        from pydoc_data.topics import topics

        return tuple(sentences_of([topics[name] for name in sorted(topics)]))
    texts = []
    for package, modules in (("scipy", SCIPY_MODULES), ("skimage", SKIMAGE_MODULES)):
        root = package_dir(package)
        for module in modules:
            texts += [numpydoc_prose(doc) for doc in docstrings(root / f"{module}.py")]
    return tuple(sentences_of(texts))


def split(held_out: bool, eval_count: int, frames: int) -> tuple[list[str], list[str]]:
    """(evaluation, calibration) sentences: the shuffled material from the front and from the
    back."""
    pool = list(material(held_out))
    order = np.random.default_rng(SEEDS["heldout" if held_out else "tuning"]).permutation(len(pool))
    if eval_count + frames > len(pool):
        raise ValueError(f"{len(pool)} sentences, {eval_count} + {frames} asked")
    shuffled = [pool[i] for i in order]
    return shuffled[:eval_count], shuffled[::-1][:frames]


# -- frames -------------------------------------------------------------------------------------
def write_frames(folder: Path, texts: list[str], tok) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, text in enumerate(texts):
        file = folder / f"{i:04d}.npz"
        if not file.is_file():
            np.savez(file, **minilm.encode(tok, text))
        names[f"{folder.name}/{file.name}"] = text
    return names


def material_digest(held_out: bool) -> str:
    return hashlib.sha256("\n".join(material(held_out)).encode()).hexdigest()[:16]


def prepare(work: Path, model: str, eval_count: int, frames: int, held_out: bool) -> Path:
    """Make (or reuse) one set: eval/<i>.npz and calib_<frames>/<i>.npz under
    work/data/<model>-<eval_count>/ (tuning) or <model>-heldout-<eval_count>/."""
    from data import render_set

    assert model in MODELS, model
    root = work / "data" / f"{model}-{'heldout-' if held_out else ''}{eval_count}"
    source = minilm.source_dir()
    manifest = {
        "version": VERSION,
        "material": material_digest(held_out),
        "model": {"version": minilm.VERSION, "source": minilm.digest(source)},
        "eval": eval_count,
        "set": "heldout" if held_out else "tuning",
    }

    def render() -> None:
        tok = minilm.tokenizer(source)
        texts, calib = split(held_out, eval_count, frames)
        names = write_frames(root / "eval", texts, tok)
        names |= write_frames(root / f"calib_{frames}", calib, tok)
        listed = root / "sentences.json"
        if listed.is_file():
            names = json.loads(listed.read_text(encoding="utf-8")) | names
        write_json(listed, names)

    return render_set(root, manifest, frames, render)


def describe(root: Path) -> dict:
    """Sentence and token counts of a set's folders (for the README and the results)."""
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "cache"):
        lengths = [np.load(f)["input_ids"].shape[1] for f in list_frames(folder)]
        found[folder.name] = {
            "frames": len(lengths),
            "tokens": {
                "min": min(lengths),
                "median": float(np.median(lengths)),
                "max": max(lengths),
            },
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--eval", type=int, default=200, help="evaluation sentences")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--held-out", action="store_true")
    parser.add_argument("--show", type=int, default=0, help="print this many sentences of each")
    args = parser.parse_args()
    root = prepare(args.work, "minilm", args.eval, args.calib, args.held_out)
    print(root, f"({len(material(args.held_out))} sentences in the source)")
    print(json.dumps(describe(root)))
    texts, calib = split(args.held_out, args.eval, args.calib)
    for text in texts[: args.show] + calib[: args.show]:
        print("-", text)


if __name__ == "__main__":
    main()
