#!/usr/bin/env python3
"""A second real model: py3langid's language identifier, packed and scored on Django's translations.

The model is the one py3langid ships inside its wheel (a fork of Lui & Baldwin's langid.py): a
naive Bayes classifier over byte n-grams whose weights are one 100,053 x 142 matrix of
log-probabilities (features x languages, stored by py3langid as float16, 28 MB), which is
exactly an FC layer: scores = log1p(feature counts) @ W + b. Nothing is downloaded.

The data are real human translations that also ship offline: the gettext catalogs (.mo) in
Django's wheel, about 80 languages the model knows. Every translated message of 20 characters or
more (placeholders and markup removed) is one test sentence labelled with its catalog's language.

Each recipe packs W, loads it back, and runs py3langid's own classifier on the restored weights:

    recipe  bytes  x smaller  accuracy  change vs float32  agreement with float32

It writes langid.json and, with matplotlib (the `plot` extra), langid.png.

    pip install -e '.[langid]'      # py3langid and django (for its catalogs)
    python examples/langid/langid_eval.py [--out demo-out/langid] [--languages de fr ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from accuracy_table import evaluate, print_table, write_report  # noqa: E402

import kformat  # noqa: E402

RECIPES = [
    ("fp16 (as py3langid ships it)", "fp16", []),
    ("int8", "int8", []),
    ("kmeans8", "kmeans8", []),
    ("kmeans4", "kmeans4", []),
    ("kmeans2", "kmeans2", []),
    ("kmeans2 per group of 4096 rows", "fp16", ["nb_ptc=kmeans:2,group=4096"]),
    ("kmeans1", "fp16", ["nb_ptc=kmeans:1"]),
]
MIN_CHARS = 20
# Django locale names whose language py3langid calls otherwise.
LOCALE_ALIASES = {"nb": "no"}
PLACEHOLDER = re.compile(r"%\(\w+\)[sdrf]|%[sdrf]|\{\w*\}|<[^>]+>|&\w+;")


def read_mo(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a GNU gettext .mo catalog (the format is a table of lengths and offsets)."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">"
    _, count, originals, translations = struct.unpack(order + "4I", data[4:20])

    def string(table: int, i: int) -> str:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i : table + 8 * i + 8])
        return data[offset : offset + length].decode("utf-8")

    return [(string(originals, i), string(translations, i)) for i in range(count)]


def django_sentences(known: set[str], languages: list[str] | None = None) -> list[tuple[str, str]]:
    """(language, sentence) from every Django catalog whose language the model knows, deduplicated."""
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("django is not installed: pip install -e '.[langid]'")
    root = Path(list(spec.submodule_search_locations)[0])
    seen: set[tuple[str, str]] = set()
    for mo in sorted(root.glob("**/locale/*/LC_MESSAGES/django.mo")):
        locale = mo.parent.parent.name
        lang = LOCALE_ALIASES.get(locale.split("_")[0].lower(), locale.split("_")[0].lower())
        if lang not in known or (languages and lang not in languages):
            continue
        for msgid, msgstr in read_mo(mo):
            if not msgid:  # the catalog header
                continue
            for form in msgstr.split("\x00"):  # plural forms
                text = " ".join(PLACEHOLDER.sub(" ", form).split())
                if len(text) >= MIN_CHARS:
                    seen.add((lang, text))
    return sorted(seen)


def load_model():
    from py3langid import modelio
    from py3langid.langid import MODEL_DIR, MODEL_FILE

    return modelio.load_model(MODEL_DIR / MODEL_FILE)


def classify(model, weights: np.ndarray, texts: list[str]) -> list[str]:
    """py3langid's own classifier with its weight matrix replaced by `weights`."""
    from py3langid.langid import LanguageIdentifier

    _, pc, classes, nextmove, row, output = model
    identifier = LanguageIdentifier(weights, np.asarray(pc), classes, nextmove, output, tk_row=row)
    return [identifier.classify(t)[0] for t in texts]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="demo-out/langid", help="working directory (default demo-out/langid)"
    )
    parser.add_argument(
        "--languages", nargs="+", help="evaluate only these languages (default: all the model knows)"
    )
    parser.add_argument(
        "--target-bits",
        type=float,
        nargs="+",
        default=[1.5, 3.0],
        help="bit allocation targets for the 'allocated' rows, bits per parameter (default 1.5 3)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = load_model()
    shipped, pc, classes = np.asarray(model[0]), np.asarray(model[1], dtype=np.float32), model[2]
    data = django_sentences(set(classes), args.languages)
    if not data:
        raise SystemExit(f"no Django translations for {args.languages}")
    labels = np.array([lang for lang, _ in data])
    texts = [text for _, text in data]
    source = out / "langid-float32.npz"
    np.savez(source, nb_ptc=shipped.astype(np.float32), nb_pc=pc)
    params = shipped.size + pc.size
    f32_bytes = 4 * params
    reference = np.array(classify(model, shipped.astype(np.float32), texts))
    f32_acc = float((reference == labels).mean())
    print(
        f"py3langid: {shipped.shape[0]:,} byte n-gram features x {len(classes)} languages, {params:,}"
        " parameters;"
        f" {len(texts):,} Django translations in {len(set(labels))} languages; float32 accuracy {f32_acc:.2%}"
    )

    def predict(path: Path) -> tuple[np.ndarray, dict]:
        with kformat.open(str(path)) as packed:
            weights, rule = packed["nb_ptc"].numpy(), packed["nb_ptc"].rule
        return np.array(classify(model, weights, texts)), {"rule": rule}

    rows = evaluate(out, "langid", source, RECIPES, args.target_bits, f32_bytes, predict, labels, reference)
    print_table(rows, "accuracy")
    write_report(
        out,
        "langid",
        {
            "sentences": len(texts),
            "languages": dict(sorted(Counter(labels.tolist()).items())),
            "parameters": params,
        },
        rows,
        size_unit="MiB",
        ylabel="accuracy on Django translations (%)",
        title="py3langid (100,053 x 142 naive Bayes): size vs accuracy per recipe",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
