#!/usr/bin/env python3
"""Write spec/schema/*.json from the pydantic models (the schema's single source of truth).

python tools/gen_schema.py          # rewrite the files
python tools/gen_schema.py --check  # exit 1 if the committed files differ (CI uses the test)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kformat.recipe import Recipe
from kformat.format.manifest import Manifest

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "spec" / "schema"
MODELS = {"manifest.schema.json": Manifest, "recipe.schema.json": Recipe}


def render() -> dict[str, str]:
    out = {}
    for filename, model in MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[filename] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    drift = []
    for filename, text in render().items():
        path = SCHEMA_DIR / filename
        if args.check:
            if not path.exists() or path.read_text() != text:
                drift.append(filename)
        else:
            SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if drift:
        print(f"schema drift: {', '.join(drift)}; run `make schema`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
