#!/usr/bin/env python3
"""Pack speed: kformat recipes against gguf-py's numpy Q4_0 quantizer on the same tensors.

The model is the VGG16-shaped one (138.4M parameters, He-init, seed 0; one FC layer holds 74%
of them), or with `--model bert` the BERT-base-shaped one (108.9M parameters in 197 tensors,
none dominant; Student-t weights), or with `--model minilm` the all-MiniLM-L6-v2-shaped one
(22.7M parameters, the word embedding 52% of them), in memory. Each variant runs in a fresh process, several
times (the best time counts):

  gguf Q4_0          gguf.quants.quantize(w, Q4_0) of every tensor (32-value blocks, one
                     fp16 scale each), what `convert_hf_to_gguf.py --outtype q4_0` runs
  kformat <recipe>   kformat.pack(weights, file, recipe, jobs=N): quantize, encode planes,
                     hash and write the .kf (the whole job, not only the quantizer)
  kformat bits4.5    kformat.pack(weights, file, "fp16", target_bits=4.5): bit allocation
                     (estimates of every candidate, then packs measured against the target);
                     not in the default set (tens of seconds), ask with --recipes bits4.5

`--jobs` output is checked byte-identical to `--jobs 1`.

With --whole-process the model is first written to a .safetensors file and each run is a
whole process timed from outside, start-up, imports and reading the file included (the
package's bytecode written first, as an installed copy has it):
`python -m kformat pack model.safetensors -o m.kf --recipe R --jobs N` against a script that
loads the file with safetensors and quantizes it with gguf-py, what a user's command costs.
`--jobs 1` and `--jobs N` then run in turn, and the gain is also given as the median of the
pairs' ratios (this machine's speed drifts by tens of percent from minute to minute). In
memory, `--pairs P` does the same: P rounds of a fresh `--jobs 1` process and a fresh
`--jobs N` one, each the best of `--repeat` packs. `--ceiling` also times, per preset, two
`--jobs 1` processes at once against one alone: 2 x alone / at once is what this machine's
cores give the work with no threads in the way, the yardstick for the `--jobs N` gain.
Whole commands also time the command's start-up S (`python -m kformat --version`: the
interpreter and the package's imports, the best of several) and give, per preset, the bound
on the gain with everything after S split perfectly over N cores: (S + P) / (S + P / N) for
a one-job command of S + P seconds. `--pause S` sleeps S seconds before each timed process.
On this virtual machine, memory a process has just freed is quick to reuse for a few
seconds, and after that a fresh page costs the host's page fault again: touching new memory
ran at 0.45 GB/s per thread cold against 13-17 GB/s warm. Back-to-back runs therefore time a
mix of the two; with a pause, every run is cold, as a user's first command after a while is.

    python tools/bench/pack_speed.py [--out bench-out] [--repeat 2] [--small | --model vgg16|bert|minilm]
                                     [--recipes kmeans4,q4]
                                     [--whole-process] [--pairs P] [--ceiling]
                                     [--kernels auto|numpy|compiled] [--pause S]

Prints a table (seconds and ratio to gguf Q4_0) and writes bench-out/pack_speed.json
(pack_speed_whole_process.json with --whole-process; _bert or _minilm before .json with
--model bert or minilm).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
variant, out, repeat, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
import kformat.synthetic
weights = getattr(kformat.synthetic, model)()
if variant == "gguf Q4_0":
    import numpy as np
    from gguf import GGMLQuantizationType, quants
    def run():
        for w in weights.values():
            flat = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
            if flat.shape[-1] % 32 == 0:
                quants.quantize(flat, GGMLQuantizationType.Q4_0)
            else:
                flat.astype(np.float16)  # what the converter keeps for odd rows
else:
    import kformat
    recipe, jobs = variant.split()[1], int(variant.split("jobs=")[1])
    target = None
    if recipe.startswith("bits"):  # bit allocation to a size: kformat pack --target-bits
        recipe, target = "fp16", float(recipe[4:])
    def run():
        kformat.pack(weights, out, recipe, jobs=jobs, target_bits=target)
while len(sys.argv) > 5 and time.time() < float(sys.argv[5]):  # --ceiling: start together
    time.sleep(0.005)
best = None
for _ in range(repeat):
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    best = seconds if best is None else min(best, seconds)
print(json.dumps({"seconds": best}))
"""


GGUF_WHOLE = r"""
import sys
import numpy as np
from gguf import GGMLQuantizationType, quants
from safetensors.numpy import load_file
for w in load_file(sys.argv[1]).values():
    flat = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
    if flat.shape[-1] % 32 == 0:
        quants.quantize(flat, GGMLQuantizationType.Q4_0)
    else:
        flat.astype(np.float16)
"""

RECIPES = ("kmeans4", "int8", "mobile", "q4", "kmeans8")


def whole_process(variant: str, model: Path, target: Path, repeat: int, pause: float = 0.0) -> dict:
    """The best wall time of `repeat` whole processes running the variant on the model file,
    each after `pause` seconds."""
    if variant == "gguf Q4_0":
        command = [sys.executable, "-c", GGUF_WHOLE, str(model)]
    else:
        recipe, jobs = variant.split()[1], variant.split("jobs=")[1]
        command = [sys.executable, "-m", "kformat", "pack", str(model), "-o", str(target)]
        if recipe.startswith("bits"):  # bit allocation to a size, as in memory
            command += ["--recipe", "fp16", "--target-bits", recipe[4:]]
        else:
            command += ["--recipe", recipe]
        command += ["--jobs", jobs, "--quiet"]
    best = None
    for _ in range(repeat):
        time.sleep(pause)
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return {"seconds": best}


def start_up(runs: int) -> float:
    """The best wall time of `python -m kformat --version` over `runs` processes: the
    interpreter and the package's imports, the serial start of every command."""
    best = None
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kformat", "--version"], capture_output=True, check=True)
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return best


def perfect_split_bound(serial: float, one_job: float, cores: int) -> float:
    """The largest gain of `cores` jobs over one when only `serial` seconds of a one-job
    command stay serial and the rest divides perfectly."""
    rest = max(0.0, one_job - serial)
    return one_job / (serial + rest / cores)


def compile_package() -> None:
    """Write the package's bytecode, as pip does when it installs one: an editable checkout run
    with PYTHONDONTWRITEBYTECODE set compiles its modules from source in every process, 50-60 ms
    of each command on this machine, which no installed copy pays."""
    import compileall

    import kformat

    compileall.compile_dir(Path(kformat.__file__).parent, quiet=1)


MODELS = {
    "vgg16": "vgg16_weights",
    "vgg16-small": "small_vgg_weights",
    "bert": "bert_base_weights",
    "minilm": "minilm_weights",
}
DESCRIPTIONS = {
    "vgg16": "VGG16-shaped",
    "vgg16-small": "VGG16-shaped at 1/8 width",
    "bert": "BERT-base-shaped (Student-t weights)",
    "minilm": "all-MiniLM-L6-v2-shaped (Student-t weights)",
}


def child(variant: str, target: Path, repeat: int, model: str, start_at: float | None = None) -> list[str]:
    """The command of a fresh process timing the variant in memory (from `start_at`, if given)."""
    command = [sys.executable, "-c", CHILD, variant, str(target), str(repeat), MODELS[model]]
    return command if start_at is None else [*command, str(start_at)]


def seconds_of(stdout: str) -> dict:
    """What a CHILD process printed last: {"seconds": best}."""
    return json.loads(stdout.strip().splitlines()[-1])


def in_memory(variant: str, target: Path, repeat: int, model: str) -> dict:
    """The best of `repeat` runs of the variant in one fresh process, the weights in memory."""
    result = subprocess.run(child(variant, target, repeat, model), capture_output=True, text=True, check=True)
    return seconds_of(result.stdout)


def ceiling(recipe: str, work: Path, repeat: int, model: str) -> dict:
    """What two cores give this workload with no thread in the way: one `--jobs 1` process
    alone, then two at once (each timing only once both have built their weights). Two
    processes at once each taking t2 where one alone takes t1 is a gain of 2 * t1 / t2."""
    variant = f"kformat {recipe} jobs=1"
    alone = in_memory(variant, work / "ceiling-a.kf", repeat, model)["seconds"]
    start_at = time.time() + (3 if model == "vgg16-small" else 15)  # after both have made the weights
    commands = [child(variant, work / f"ceiling-{tag}.kf", repeat, model, start_at) for tag in "ab"]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for command in commands]
    outputs = [c.communicate()[0] for c in children]
    if any(c.returncode for c in children):
        raise SystemExit("a --ceiling process failed")
    together = [seconds_of(out)["seconds"] for out in outputs]
    return {"alone": alone, "together": together, "gain": 2 * alone / statistics.mean(together)}


def write_model(path: Path, model: str) -> None:
    code = (
        "import sys, kformat.synthetic; from safetensors.numpy import save_file;"
        "save_file(getattr(kformat.synthetic, sys.argv[2])(), sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path), MODELS[model]], check=True)


def variants(cores: int, recipes: tuple[str, ...] = RECIPES) -> list[str]:
    out = ["gguf Q4_0"]
    for recipe in recipes:
        out.append(f"kformat {recipe} jobs=1")
        if cores > 1:
            out.append(f"kformat {recipe} jobs={cores}")
    return out


def output_for(work: Path, variant: str) -> Path:
    """The .kf file a variant writes."""
    return work / (variant.replace(" ", "_").replace("=", "") + ".kf")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="VGG16 at 1/8 width (a quick check)")
    parser.add_argument(
        "--model",
        choices=("vgg16", "bert", "minilm"),
        default="vgg16",
        help="vgg16: 138M parameters, one FC layer 74%% of them; bert: BERT-base's 109M in 197 "
        "tensors, none dominant; minilm: all-MiniLM-L6-v2's 22.7M, the word embedding 52%% of "
        "them beside 100 small tensors (kformat.synthetic)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="the N of --jobs N")
    parser.add_argument(
        "--recipes", default=",".join(RECIPES), help="comma-separated presets to time (default: %(default)s)"
    )
    parser.add_argument(
        "--whole-process",
        action="store_true",
        help="time whole commands on a .safetensors file (start-up and reading included)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="in memory: run --jobs 1 and --jobs N in turn this many times, each a fresh process "
        "(best of --repeat), and give the median of the pairs' gains (whole commands always pair)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also time two --jobs 1 processes at once against one alone, per preset: the gain "
        "the machine's cores give this work with no threads in the way (in memory)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="seconds to sleep before each timed process, so that every run starts on cold memory "
        "(on a virtual machine, pages a process just freed are quick to reuse for a few seconds; "
        "after that, fresh pages cost the host's page faults again); default: none",
    )
    parser.add_argument(
        "--kernels",
        choices=("auto", "numpy", "compiled"),
        default="auto",
        help="the fits' inner loops: as a user gets them (auto: numba once they have taken 1 s), "
        "numpy only (KFORMAT_NUMBA=0), or compiled from the first fit (KFORMAT_NUMBA=1)",
    )
    args = parser.parse_args()
    os.environ.pop("KFORMAT_NUMBA", None)
    if args.kernels != "auto":
        os.environ["KFORMAT_NUMBA"] = "0" if args.kernels == "numpy" else "1"
    model_key = "vgg16-small" if args.small else args.model
    work = args.out / "pack_speed"
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.safetensors"
    serial = None
    if args.whole_process:
        write_model(model, model_key)
        compile_package()
        serial = start_up(max(5, args.repeat))
        print(f"  start-up (python -m kformat --version): {serial:.3f} s", file=sys.stderr, flush=True)
    rows = []
    paired: dict[str, list[float]] = {}  # jobs=1 and jobs=N run in turn, ratios per pair
    pairs = args.repeat if args.whole_process else args.pairs  # rounds of (jobs=1, jobs=N)
    each = 1 if args.whole_process else args.repeat  # runs per process (or per round)

    def timed(variant: str, repeat: int) -> dict:
        target = output_for(work, variant)
        if args.whole_process:
            return whole_process(variant, model, target, repeat, args.pause)
        time.sleep(args.pause)
        return in_memory(variant, target, repeat, model_key)

    for variant in variants(args.jobs, tuple(args.recipes.split(","))):
        target = output_for(work, variant)
        if pairs and variant.startswith("kformat"):
            if variant.endswith("jobs=1"):
                continue  # timed in turn with its jobs=N below
            one = variant.rsplit(" ", 1)[0] + " jobs=1"
            times = {one: [], variant: []}
            for _ in range(pairs):  # A B A B: the machine's drift hits both alike
                for v in times:
                    times[v].append(timed(v, each)["seconds"])
            paired[variant] = sorted(a / b for a, b in zip(times[one], times[variant]))
            for v, t in times.items():
                rows.append(
                    {"variant": v, "seconds": min(t), "runs": t, "sha256": digest(output_for(work, v))}
                )
                print(f"  {v}: {min(t):.2f} s", file=sys.stderr, flush=True)
            continue
        row = {"variant": variant, **timed(variant, args.repeat)}
        if target.exists():
            row["sha256"] = digest(target)
        rows.append(row)
        print(f"  {variant}: {row['seconds']:.2f} s", file=sys.stderr, flush=True)
    base = rows[0]["seconds"]
    identical = {}
    for row in rows[1:]:
        recipe = row["variant"].split()[1]
        identical.setdefault(recipe, set()).add(row.get("sha256"))
    print(f"\n{'variant':28s} {'seconds':>8s} {'x gguf Q4_0':>12s} {'x jobs=1':>9s}")
    single: dict[str, float] = {}
    for row in rows:
        recipe = row["variant"].split()[1] if row["variant"].startswith("kformat") else None
        if row["variant"].endswith("jobs=1"):
            single[recipe] = row["seconds"]
        row["x_gguf_q4_0"] = row["seconds"] / base
        speedup = single.get(recipe, row["seconds"]) / row["seconds"] if recipe else 1.0
        row["speedup_vs_jobs1"] = speedup
        line = f"{row['variant']:28s} {row['seconds']:8.2f} {row['x_gguf_q4_0']:12.2f} {speedup:9.2f}"
        if row["variant"] in paired:
            gains = paired[row["variant"]]
            middle = row["paired_speedup_median"] = statistics.median(gains)
            line += f"   paired: median {middle:.2f} (min {gains[0]:.2f}, max {gains[-1]:.2f})"
        if serial is not None and recipe in single and not row["variant"].endswith("jobs=1"):
            bound = row["perfect_split_bound"] = perfect_split_bound(serial, single[recipe], args.jobs)
            line += f"   bound at a perfect split {bound:.2f}"
        print(line)
    ceilings = {}
    if args.ceiling:
        print(f"\n{'two --jobs 1 processes at once':32s} {'alone s':>8s} {'each s':>12s} {'gain':>6s}")
        for recipe in args.recipes.split(","):
            found = ceilings[recipe] = ceiling(recipe, work, args.repeat, model_key)
            at_once = "/".join(f"{t:.2f}" for t in found["together"])
            print(f"{recipe:32s} {found['alone']:8.2f} {at_once:>12s} {found['gain']:6.2f}")
    same = {recipe: len(hashes) == 1 for recipe, hashes in identical.items()}
    verdicts = ", ".join(f"{r} {'yes' if s else 'NO'}" for r, s in same.items())
    print(f"\nbyte-identical for every --jobs: {verdicts}")
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": DESCRIPTIONS[model_key],
        "timing": "whole process, from a .safetensors file" if args.whole_process else "pack() in memory",
        "kernels": args.kernels,
        "pause_seconds": args.pause,
        "start_up_seconds": serial,
        "rows": rows,
        "byte_identical": same,
        "ceiling": ceilings,
    }
    name = "pack_speed_whole_process.json" if args.whole_process else "pack_speed.json"
    if args.model != "vgg16" and not args.small:
        name = name.replace(".json", f"_{args.model}.json")
    if args.kernels != "auto":
        name = name.replace(".json", f"_{args.kernels}.json")
    (args.out / name).write_text(json.dumps(report, indent=2))
    model.unlink(missing_ok=True)
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
