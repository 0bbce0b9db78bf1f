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
import json
import re
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import kformat
from kformat.allocate import container_size

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-out/langid", help="working directory (default demo-out/langid)")
    parser.add_argument("--languages", nargs="+", help="evaluate only these languages (default: all the model knows)")
    parser.add_argument("--target-bits", type=float, nargs="+", default=[1.5, 3.0],
                        help="bit allocation targets for the 'allocated' rows, bits per parameter (default 1.5 3)")
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
    print(f"py3langid: {shipped.shape[0]:,} byte n-gram features x {len(classes)} languages, {params:,} parameters;"
          f" {len(texts):,} Django translations in {len(set(labels))} languages; float32 accuracy {f32_acc:.2%}")

    rows = [{"recipe": "float32", "bytes": f32_bytes, "ratio": 1.0, "accuracy": f32_acc, "agreement": 1.0}]
    recipes = list(RECIPES) + [(f"allocated, {bits:g} bits/weight", "fp16", bits) for bits in args.target_bits]
    for label, recipe, rules in recipes:
        path = out / f"langid-{len(rows)}.kf"
        started = time.perf_counter()
        if label.startswith("allocated"):
            kformat.pack(str(source), path, recipe, target_bits=rules)
        else:
            kformat.pack(str(source), path, recipe, rules=rules)
        packed_in = time.perf_counter() - started
        with kformat.open(str(path)) as packed:
            weights = packed["nb_ptc"].numpy()
            rule = packed["nb_ptc"].rule
        predicted = np.array(classify(model, weights, texts))
        size = container_size(path)
        rows.append({"recipe": label, "bytes": size, "ratio": f32_bytes / size, "rule": rule,
                     "accuracy": float((predicted == labels).mean()),
                     "agreement": float((predicted == reference).mean()), "pack_seconds": round(packed_in, 2)})
    print(f"\n{'recipe':32s} {'bytes':>11s} {'x smaller':>9s} {'accuracy':>8s} {'vs float32':>10s} {'agrees':>7s}")
    for r in rows:
        r["change"] = r["accuracy"] - f32_acc
        print(f"{r['recipe']:32s} {r['bytes']:11,d} {r['ratio']:9.2f} {r['accuracy']:8.2%} {r['change'] * 100:+9.2f}pp"
              f" {r['agreement']:7.2%}")
    per_language = Counter(labels.tolist())
    (out / "langid.json").write_text(json.dumps(
        {"sentences": len(texts), "languages": dict(sorted(per_language.items())), "parameters": params,
         "rows": rows}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\nwrote {out / 'langid.json'} (install the `plot` extra for the plot)")
        return 0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>phX*"
    for k, r in enumerate(rows):
        ax.scatter(r["bytes"] / 2**20, r["accuracy"] * 100, s=40, marker=markers[k % len(markers)], alpha=0.8,
                   label=f"{r['recipe']} ({r['ratio']:.1f}x)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("container size (MiB, log scale)")
    ax.set_ylabel("accuracy on Django translations (%)")
    ax.set_title("py3langid (100,053 x 142 naive Bayes): size vs accuracy per recipe")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "langid.png", dpi=120)
    print(f"\nwrote {out / 'langid.json'} and {out / 'langid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
