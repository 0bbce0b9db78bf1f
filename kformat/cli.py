"""`kformat` command line: parses arguments, calls the public API (`kformat.*`), prints."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

import kformat
from kformat.errors import KFormatError

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2
Progress = kformat.TerminalProgress


def parse_size(text: str) -> int:
    units = {"": 1, "b": 1}
    for power, prefix in enumerate("kmg", start=1):
        units.update({prefix: 1000**power, prefix + "b": 1000**power, prefix + "ib": 1024**power})
    number = text.strip().rstrip("bBiI").rstrip("kKmMgG")
    unit = text.strip()[len(number) :].lower()
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 64MB, 512KiB or 1000000") from None
    return int(value)


def _storage_options(args) -> dict:
    options = {}
    if getattr(args, "manifest_sha256", None):
        options["manifest_sha256"] = args.manifest_sha256
    for item in getattr(args, "storage_option", None) or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise KFormatError(f"--storage-option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def cmd_pack(args) -> int:
    progress = Progress("pack", None if not args.quiet else False)
    report = kformat.pack(
        args.input,
        args.output,
        args.recipe,
        rules=args.rule,
        metadata=_metadata(args.metadata),
        layout="sharded" if args.sharded else "single",
        shard_size=args.shard_size,
        progress=progress,
        target_size=args.target_size,
        target_bits=args.target_bits,
        jobs=args.jobs,
        importance=args.importance,
        scheduler=args.scheduler,
        staging=args.staging,
    )
    for warning in report.unmatched_rules:
        print(f"kformat: warning: {warning}", file=sys.stderr)
    summary = report.summary()
    if args.json:
        print(
            json.dumps(
                {"output": str(args.output), "unmatched_rules": report.unmatched_rules, **summary}, indent=2
            )
        )
    elif not args.quiet:
        tot = summary["totals"]
        print(
            f"packed {tot['tensors']} tensors ({tot['params']:,} parameters) into {args.output}:"
            f" {kformat.human_bytes(tot['container_bytes'])}, {tot['ratio_to_float32']:.2f}x smaller than"
            " float32"
            f" ({kformat.human_bytes(tot['float32_bytes'])}), {tot['bits_per_weight']:.2f} bits/weight"
        )
        print(
            f"manifest sha256 {report.manifest_sha256}: pin this copy with --manifest-sha256 (every layout"
            " has its own manifest, so a published copy has its own digest)"
        )
    return EXIT_OK


def _metadata(items: list[str]) -> dict[str, str]:
    metadata = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise KFormatError(f"--metadata {item!r}: expected KEY=VALUE")
        metadata[key] = value
    return metadata


def cmd_publish(args) -> int:
    args.sharded = True
    return cmd_pack(args)


def cmd_unpack(args) -> int:
    progress = Progress("unpack", None if not args.quiet else False)
    names = kformat.unpack(args.input, args.output, progress, dtype=args.dtype, **_storage_options(args))
    if args.json:
        print(json.dumps({"output": str(args.output), "tensors": names}, indent=2))
    elif not args.quiet:
        print(f"unpacked {len(names)} tensors to {args.output}")
    return EXIT_OK


def cmd_inspect(args) -> int:
    summary = kformat.inspect(args.input, **_storage_options(args))
    if args.json:
        print(json.dumps(summary, indent=2))
    elif summary["version"] is None:  # a model file, not a container
        print(f"{args.input}: a model file (not a kformat container); its tensors as stored:")
        print(kformat.format_summary(summary))
    else:
        tot = summary["totals"]
        print(
            f"{args.input}: kformat {summary['version'][0]}.{summary['version'][1]}, {summary['layout']}"
            + (f" ({summary['shards']} shards)" if summary["shards"] else "")
            + f", recipe {summary['recipe'] or '-'}, {summary['generator']}"
        )
        print(kformat.format_summary(summary))
        print(f"float32 would be {kformat.human_bytes(tot['float32_bytes'])}")
        print(
            f"manifest sha256 {summary['manifest_sha256']} (pin with --manifest-sha256 or kformat.open(...,"
            " manifest_sha256=))"
        )
    return EXIT_OK


def cmd_verify(args) -> int:
    progress = Progress("verify", None if not (args.quiet or args.json) else False)
    try:
        problems = kformat.verify(args.input, progress, **_storage_options(args))
    except (
        kformat.FormatError,
        kformat.IntegrityError,
    ) as exc:  # the file is bad: a finding, not a usage error
        problems = [kformat.Problem("container", str(exc))]
    if args.json:
        found = [{"label": p.label, "message": p.message} for p in problems]
        print(json.dumps({"input": args.input, "ok": not problems, "problems": found}, indent=2))
        return EXIT_PROBLEMS if problems else EXIT_OK
    if not problems:
        if not args.quiet:
            print(f"{args.input}: OK (every byte accounted for: hashes, planes, padding)")
        return EXIT_OK
    for problem in problems:
        print(f"{args.input}: BAD {problem.label}: {problem.message}")
    print(f"{args.input}: {len(problems)} problem(s) found", file=sys.stderr)
    return EXIT_PROBLEMS


def cmd_compare(args) -> int:
    result = kformat.compare(args.original, args.packed, **_storage_options(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(kformat.format_comparison(result))
    for problem in result.problems:
        print(f"kformat: compare: {problem}", file=sys.stderr)
    return EXIT_PROBLEMS if result.problems else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kformat",
        description="Pack model weights into small, verifiable kformat containers (k-means or linear"
        " codes stored as PNG/zstd tiles, fp16, raw), look inside them, check and unpack them.",
        epilog="Exit status: 0 success, 1 verify or compare found problems, 2 bad input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"kformat {kformat.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_output_args(p, quiet: bool = True):
        p.add_argument("--json", action="store_true", help="machine-readable output (errors too)")
        if quiet:
            p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
        p.add_argument(
            "-v", "--verbose", action="count", default=0, help="log decisions (-v) and every tensor (-vv)"
        )

    def add_pack_args(p):
        p.add_argument(
            "input",
            help=f"model weights: {', '.join(kformat.input_formats())};"
            " or a kformat container (.kf, sharded directory, URL) to re-lay out as is",
        )
        p.add_argument(
            "-r",
            "--recipe",
            default=None,
            help=f"a preset ({', '.join(kformat.PRESETS)}) or a TOML/JSON recipe file (default: fp16)",
        )
        p.add_argument(
            "--rule",
            action="append",
            default=[],
            metavar="GLOB=RULE",
            help="override for matching tensors, before the recipe's rules; e.g."
            " 'classifier.0.*=kmeans:4' or 'fc*=kmeans:4,group=64,codec=zstd'. Repeatable.",
        )
        p.add_argument(
            "--shard-size",
            type=parse_size,
            default="64MB",
            help="largest shard of a sharded directory (default 64MB)",
        )
        target = p.add_mutually_exclusive_group()
        target.add_argument(
            "--target-size",
            type=parse_size,
            metavar="SIZE",
            help="bit allocation: choose each quantized tensor's rule (k-means bits, per-tensor"
            " or per-group codebooks, fp16) for the least weighted error within SIZE (e.g. 20MiB);"
            " float tensors kept raw for being small (norms, biases) may go fp16 to make room",
        )
        target.add_argument(
            "--target-bits",
            type=float,
            metavar="BITS",
            help="bit allocation to BITS bits per parameter on average, the whole file over every"
            " parameter (e.g. 4.5)",
        )
        p.add_argument(
            "-j",
            "--jobs",
            type=int,
            default=None,
            metavar="N",
            help="encode N tensors at once (default: every core): large tensors of a .safetensors"
            " input (or a checkpoint of .safetensors shards) are read and encoded by N worker"
            " processes, the others by N threads (a tensor of a third of the model or more is"
            " encoded here, the others by N - 1 processes); with --target-size/--target-bits,"
            " candidates are also weighed in N worker processes. The output is the same for any N"
            " (KFORMAT_FORK=0: threads only)",
        )
        p.add_argument(
            "--scheduler",
            metavar="ADDRESS",
            help="encode on a Dask cluster (the dask extra): every tensor is a task on its workers,"
            " which must see INPUT at the same path; the output is the same as a local pack's",
        )
        p.add_argument(
            "--staging",
            metavar="URL",
            help="with --scheduler: where workers leave encoded tensors for this process to"
            " assemble (any fsspec URL both see, e.g. s3://bucket/tmp; default: next to OUTPUT)",
        )
        p.add_argument(
            "--importance",
            metavar="FILE",
            help="an importance file (kformat.torch.calibrate): k-means fits each weight's error"
            " weighted by how much it matters on calibration data; where the file holds input"
            " covariances (calibrate records them by default) codes are rounded with error feedback",
        )
        p.add_argument(
            "--metadata",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a string stored in the manifest's metadata (repeatable)",
        )
        add_output_args(p)

    p = sub.add_parser(
        "pack",
        help="pack a model file by a recipe",
        description="Pack a model file into a single .kf file (or, with --sharded, a CDN-ready directory).",
    )
    add_pack_args(p)
    p.add_argument("-o", "--output", required=True, help="output .kf file (or directory with --sharded)")
    p.add_argument(
        "--sharded", action="store_true", help="write a directory: manifest.kf + content-addressed shards"
    )
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser(
        "publish",
        help="pack into a sharded directory for a CDN",
        description="Pack into DIR/manifest.kf plus immutable shards/<sha256>.kfs files,"
        " ready to serve over HTTP with range requests (see examples/nginx/). Given a .kf"
        " file, its blobs are copied into shards verbatim, without re-quantizing.",
    )
    add_pack_args(p)
    p.add_argument("output", help="output directory")
    p.set_defaults(func=cmd_publish)

    def add_url_args(p):
        p.add_argument("input", help="a .kf file or sharded directory: a path or any fsspec URL")
        p.add_argument(
            "--storage-option",
            action="append",
            metavar="KEY=VALUE",
            help="fsspec storage option (value parsed as JSON when it can be)",
        )
        p.add_argument(
            "--manifest-sha256",
            metavar="HEX",
            help="refuse the model unless its manifest has this SHA-256 (as `inspect` prints it);"
            " every blob's hash is in the manifest, so this pins every byte",
        )

    p = sub.add_parser("unpack", help="write all tensors to .npz, .safetensors or .pt")
    add_url_args(p)
    p.add_argument("-o", "--output", required=True, help="output .npz, .safetensors or .pt")
    p.add_argument(
        "--dtype",
        metavar="TYPE",
        help="cast every floating-point tensor to TYPE (e.g. float32); by default raw tensors keep"
        " their own dtype and lossy ones are float32",
    )
    add_output_args(p)
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("inspect", help="show each tensor's rule, size, rate and error")
    add_url_args(p)
    add_output_args(p, quiet=False)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "verify",
        help="check every byte; exit 1 naming each problem",
        description="Check every blob's length and SHA-256 and that it decodes, that padding is zero,"
        " that nothing follows the last blob, and that each shard's content matches its name.",
    )
    add_url_args(p)
    add_output_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "compare",
        help="per-tensor error of a packed model against the original",
        description="Compare every tensor of PACKED with ORIGINAL: SQNR (dB), cosine"
        " similarity, largest absolute error and relative Frobenius error, and totals"
        " over all float tensors. Tensors only one side holds are listed.",
    )
    inputs = ", ".join(kformat.input_formats())
    p.add_argument("original", help=f"the original weights: {inputs}; or a kformat path/URL")
    p.add_argument(
        "packed", help="the kformat model: a .kf file or sharded directory, path or any fsspec URL"
    )
    add_output_args(p, quiet=False)
    p.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec storage option (value parsed as JSON when it can be)",
    )
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kformat.configure_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        with kformat.terminate_as_interrupt():
            return args.func(args)
    except KFormatError as exc:
        print(f"kformat: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "kind": exc.kind, "type": type(exc).__name__}, indent=2))
        return EXIT_ERROR
    except OSError as exc:  # the last resort: an operating-system error no layer named
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kformat: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:  # ^C, or SIGTERM (kformat.Terminated): 128 + the signal
        terminated = isinstance(exc, kformat.Terminated)
        print(f"kformat: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130


def run() -> None:
    """main() in a process of its own: the imports' objects, then what main() made (numba's), frozen
    out of the collector, whose passes and exit skip them (main() alone leaves a caller's alone);
    numba, if a pack loads it, loaded without scipy and cffi (kformat.methods.kernels._lean_numba);
    freed memory kept for reuse (kformat.heap)."""
    os.environ.setdefault("KFORMAT_NUMBA_LEAN", "1")
    os.environ.setdefault("KFORMAT_KEEP_FREED", "1")
    gc.freeze()
    status = main()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
