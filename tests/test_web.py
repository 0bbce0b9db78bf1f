"""The digits page (examples/web) end to end in Debian's headless Chromium, driven by
playwright-core, served by a local nginx with the shipped model rules: the page loads the
sharded model with kformat.js, predicts what the Python reader's model predicts, classifies a
stroke drawn with the mouse, and on reload fetches only the manifest (shards from the Cache
API). The screenshot lands in test-out/web/."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "web"))
sys.path.insert(0, str(ROOT / "tools"))

from local_nginx import LocalNginx, NginxUnavailable  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and NODE and (ROOT / "js" / "node_modules" / "playwright-core").exists())
    and not os.environ.get("KFORMAT_REQUIRE_BROWSER"),
    reason="needs chromium, node and js/node_modules (make test installs them)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("torch")
    import build

    root = tmp_path_factory.mktemp("web")
    os.chmod(root, 0o755)
    info = build.build(root / "site", epochs=10)
    for path in (root / "site").rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    server = LocalNginx(root / "site")
    try:
        server.start()
    except NginxUnavailable as exc:
        pytest.fail(f"the web page test needs nginx: {exc}")
    yield server, info
    server.stop()


def test_digits_page_in_chromium(site):
    server, info = site
    out = ROOT / "test-out" / "web"
    out.mkdir(parents=True, exist_ok=True)
    screenshot = out / "digits-page.png"
    mark = server.mark()
    result = subprocess.run(
        [
            NODE,
            str(ROOT / "js" / "tools" / "browser_check.mjs"),
            server.url(""),
            str(screenshot),
            "--chromium",
            CHROMIUM,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    requests = server.requests_since(mark)
    assert report["errors"] == []
    assert report["samples"] == report["expected"], (
        "the page predicts other digits than the Python reader's model"
    )
    assert report["drawn"] in range(10)
    first, second = report["first"], report["second"]
    assert first["cacheHits"] == 0 and first["networkBytes"] >= info["bytes"]
    assert second["cacheHits"] == first["shards"] and second["shards"] > 1
    manifest_bytes = (server.root / "models" / "digits" / "manifest.kf").stat().st_size
    assert second["networkBytes"] == manifest_bytes  # the second load fetches the manifest only
    model_requests = [r.uri for r in requests if "/models/" in r.uri]
    shard_requests = [uri for uri in model_requests if "/shards/" in uri]
    assert len(shard_requests) == first["shards"]  # each shard fetched once, over both loads
    assert sum(uri.endswith("manifest.kf") for uri in model_requests) == 2
    assert report["shown"].strip() in [str(d) for d in range(10)]
    assert screenshot.stat().st_size > 10_000
    print(
        f"\nscreenshot: {screenshot} (Chromium {report['chromium']});"
        f" first load {first['networkBytes']:,} bytes in {first['seconds'] * 1000:.0f} ms,"
        f" second {second['networkBytes']:,} bytes ({second['cacheHits']} shards from the cache)"
    )
