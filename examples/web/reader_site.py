"""kformat.js laid out for a browser: the reader's modules, the packages js/package.json
depends on, and the import map that names them (a page has no node_modules resolution).

The web example (build.py) and tools/bench/js_decode.py serve the reader this way; the
packages and their entry points are read from the package files, so a dependency added to
js/package.json reaches both pages without another edit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

JS = Path(__file__).resolve().parent.parent.parent / "js"


def copy_reader(site: Path) -> str:
    """Copy kformat.js into `site`/js (modules and installed dependencies); the page's
    <script type="importmap"> element for them."""
    js = site / "js"
    (js / "node_modules").mkdir(parents=True)
    shutil.copy(JS / "kformat.js", js / "kformat.js")
    shutil.copytree(JS / "src", js / "src")
    imports = {}
    for package in json.loads((JS / "package.json").read_text())["dependencies"]:
        installed = JS / "node_modules" / package
        shutil.copytree(installed, js / "node_modules" / package)
        imports[package] = f"./js/node_modules/{package}/{_entry(installed).removeprefix('./')}"
    return f'<script type="importmap">{json.dumps({"imports": imports})}</script>'


def missing() -> list[str]:
    """The reader's dependencies not installed in js/node_modules (npm ci installs them)."""
    packages = json.loads((JS / "package.json").read_text())["dependencies"]
    return [p for p in packages if not (JS / "node_modules" / p / "package.json").exists()]


def _entry(package: Path) -> str:
    """The ES module a browser imports for the package: its exports' "." (import or default
    condition), else "module", else "main"."""
    meta = json.loads((package / "package.json").read_text())
    dot = meta.get("exports", {}).get(".") if isinstance(meta.get("exports"), dict) else meta.get("exports")
    while isinstance(dot, dict):
        dot = dot.get("import", dot.get("default"))
    return dot or meta.get("module") or meta["main"]
