#!/usr/bin/env python3
"""Build the digits web page: train the 64-512-512-10 digits network (examples/digits), publish
it as a sharded kformat model, and lay out a directory any static server (nginx) can serve:

    OUT/index.html, OUT/app.js           the page (examples/web/)
    OUT/js/                              the JavaScript reader and its packages (reader_site.py)
    OUT/models/digits/                   manifest.kf + shards/<sha256>.kfs
    OUT/samples.json                     test digits and what the Python reader's model predicts

    python examples/web/build.py [--out demo-out/web] [--recipe mobile] [--epochs 15]

Then serve OUT (examples/nginx/kformat-locations.conf has the model rules) and open
http://127.0.0.1:PORT/ in a browser.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "examples" / "digits"))
sys.path.insert(0, str(HERE))

import kformat  # noqa: E402
from digits import load_data, logits, train  # noqa: E402
from reader_site import copy_reader, missing  # noqa: E402

IMPORT_MAP_SLOT = "<!-- importmap: build.py writes the reader's import map here -->"

SHARD_SIZE = 64 << 10  # small shards, so the page shows several being fetched and cached


def build(out: Path, recipe: str = "mobile", epochs: int = 15, samples: int = 24) -> dict:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    x_train, x_test, y_train, y_test = load_data()
    weights = train(x_train, y_train, epochs)
    source = out / "digits-float32.npz"
    np.savez(source, **weights)
    report = kformat.pack(source, out / "models" / "digits", recipe, layout="sharded", shard_size=SHARD_SIZE)
    source.unlink()
    packed = kformat.load_all(str(out / "models" / "digits"))
    predicted = logits(packed, x_test).argmax(1)
    picks = [int(i) for i in np.linspace(0, len(x_test) - 1, samples).astype(int)]
    info = {
        "recipe": recipe,
        "bytes": report.bytes,
        "float32_bytes": int(sum(a.size * 4 for a in weights.values())),
        "accuracy": float((predicted == y_test).mean()),
        "samples": [
            {"pixels": x_test[i].round(6).tolist(), "label": int(y_test[i]), "predicted": int(predicted[i])}
            for i in picks
        ],
    }
    (out / "samples.json").write_text(json.dumps(info))
    import_map = copy_reader(out)
    (out / "index.html").write_text((HERE / "index.html").read_text().replace(IMPORT_MAP_SLOT, import_map))
    shutil.copy(HERE / "app.js", out / "app.js")
    return info


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out/web"))
    parser.add_argument("--recipe", default="mobile")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--serve", action="store_true", help="then serve it from a local nginx until Ctrl-C")
    args = parser.parse_args()
    if missing():
        print("error: run `npm ci` in js/ first (make test and make demo do)", file=sys.stderr)
        return 2
    info = build(args.out, args.recipe, args.epochs)
    print(
        f"built {args.out}: digits network, {args.recipe}, {info['bytes']:,} bytes"
        f" ({info['float32_bytes'] / info['bytes']:.1f}x smaller than float32),"
        f" test accuracy {info['accuracy']:.2%}"
    )
    if args.serve:
        sys.path.insert(0, str(ROOT / "tools"))
        import time

        from local_nginx import LocalNginx

        with LocalNginx(args.out) as server:
            print(f"serving {args.out} at {server.url('')} (Ctrl-C to stop)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
