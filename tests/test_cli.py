import gc
import json
import subprocess
import sys

import numpy as np
import pytest

from kformat.cli import main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "kformat.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture
def npz(tmp_path, model):
    path = tmp_path / "m.npz"
    np.savez(path, **model)
    return path


def test_pack_inspect_verify_unpack(tmp_path, npz, capsys):
    out = tmp_path / "m.kf"
    assert main(["pack", str(npz), "-o", str(out), "-r", "mobile"]) == 0
    assert "smaller than float32" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "kmeans:4" in text and "TOTAL" in text
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    fc1 = next(t for t in summary["tensors"] if t["name"] == "fc1.weight")
    assert fc1["code_bits"] == 4 and 3 < fc1["entropy_bits"] <= 4 and fc1["bits_per_weight"] < 4.2
    tot = summary["totals"]
    assert tot["ratio_to_float32"] > 2
    # the total counts the whole file, as the bytes and the ratio shown beside it (and --target-bits)
    assert tot["bits_per_weight"] == pytest.approx(8 * out.stat().st_size / tot["params"])
    assert tot["blob_bits_per_weight"] < tot["bits_per_weight"]
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["unpack", str(out), "-o", str(tmp_path / "back.npz")]) == 0
    assert set(np.load(tmp_path / "back.npz").files) == set(np.load(npz).files)


def test_rule_overrides_and_unmatched_warning(tmp_path, npz, capsys):
    out = tmp_path / "m.kf"
    code = main(
        ["pack", str(npz), "-o", str(out), "--rule", "fc1.*=kmeans:2,group=32", "--rule", "nothing.*=raw"]
    )
    assert code == 0
    assert "rules[1] (match='nothing.*') matched no tensor" in capsys.readouterr().err
    main(["inspect", str(out), "--json"])
    fc1 = next(t for t in json.loads(capsys.readouterr().out)["tensors"] if t["name"] == "fc1.weight")
    assert fc1["rule"] == "kmeans:2,group=32"


def test_publish_writes_a_sharded_directory(tmp_path, npz):
    result = run("publish", npz, tmp_path / "cdn", "-r", "kmeans4", "--shard-size", "4KB", "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cdn" / "manifest.kf").exists()
    assert len(list((tmp_path / "cdn" / "shards").iterdir())) > 1
    assert run("verify", tmp_path / "cdn").returncode == 0


def test_verify_exit_code_names_bad_blob(tmp_path, npz):
    out = tmp_path / "m.kf"
    assert run("pack", npz, "-o", out, "-q").returncode == 0
    data = bytearray(out.read_bytes())
    data[-2] ^= 0xFF  # inside the last blob (an 8-byte raw tensor)
    out.write_bytes(bytes(data))
    result = run("verify", out)
    assert result.returncode == 1
    assert "BAD tensor" in result.stdout and "hash mismatch" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["pack", "{npz}", "-o", "{tmp}/o.kf", "-r", "nosuch"], "neither a preset"),
        (["pack", "{npz}", "-o", "{tmp}/o.kf", "--rule", "fc1=kmeans:12"], "bits"),
        (["pack", "{tmp}/missing.npz", "-o", "{tmp}/o.kf"], "no such file"),
        (["inspect", "{tmp}/notes.txt"], "unknown model file type"),
        (["verify", "{tmp}/missing.kf"], "not found"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, npz, args, message):
    (tmp_path / "notes.txt").write_text("not a model")
    args = [a.format(npz=npz, tmp=tmp_path) for a in args]
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.kf").exists()


def test_bad_recipe_file_names_the_field(tmp_path, npz):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[rules]]\nmatch = "fc*"\nrule = "kmeans:4,group=0"\n')
    result = run("pack", npz, "-o", tmp_path / "o.kf", "-r", recipe)
    assert result.returncode == 2 and "rules[0].rule.group_size" in result.stderr
    assert not (tmp_path / "o.kf").exists()


def test_help_explains_commands():
    result = run("--help")
    for word in ("pack", "unpack", "inspect", "verify", "publish"):
        assert word in result.stdout
    assert "GLOB=RULE" in run("pack", "--help").stdout


def test_help_names_every_input_format_registered(capsys):
    """The inputs pack and compare take come from the formats' registry (a format added there
    is named in the help), not a list written in the CLI that fell behind it."""
    import kformat
    from kformat.sources.formats import INPUT_FORMATS

    given = kformat.input_formats()
    assert len(given) == len(INPUT_FORMATS) and ".gguf" in given and ".onnx" in given
    assert any("Hugging Face checkpoint" in g for g in given)
    for command in ("pack", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        flat = " ".join(capsys.readouterr().out.split())
        assert all(g in flat for g in given), command


def test_jobs_give_byte_identical_output(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "m.npz",
        **{f"l{i}.weight": rng.standard_normal((64 + i, 96)).astype(np.float32) for i in range(6)},
    )
    outputs = []
    for jobs in ("1", "2", "5"):
        out = tmp_path / f"j{jobs}.kf"
        assert (
            main(["pack", str(tmp_path / "m.npz"), "-o", str(out), "-r", "mobile", "--jobs", jobs, "-q"]) == 0
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert main(["pack", str(tmp_path / "m.npz"), "-o", str(tmp_path / "x.kf"), "--jobs", "0", "-q"]) == 2


def test_json_output_metadata_and_the_digest_to_pin(tmp_path, capsys):
    import json

    import numpy as np

    import kformat

    np.savez(tmp_path / "m.npz", w=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    kf = tmp_path / "m.kf"
    assert main(["pack", str(tmp_path / "m.npz"), "-o", str(kf), "--metadata", "licence=MIT", "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    with kformat.open(str(kf)) as model:
        assert model.metadata["licence"] == "MIT"
        assert packed["manifest_sha256"] == model.manifest_sha256
    assert main(["publish", str(kf), str(tmp_path / "site"), "--json"]) == 0
    published = json.loads(capsys.readouterr().out)
    assert published["manifest_sha256"] != packed["manifest_sha256"]  # every layout has its own manifest
    assert (
        main(["verify", str(tmp_path / "site"), "--manifest-sha256", published["manifest_sha256"], "-q"]) == 0
    )
    assert capsys.readouterr().out == ""
    assert main(["verify", str(kf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"input": str(kf), "ok": True, "problems": []}
    assert main(["unpack", str(kf), "-o", str(tmp_path / "u.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == ["w"]
    assert main(["pack", str(tmp_path / "m.npz"), "-o", str(kf), "--metadata", "novalue"]) == 2


def test_inspect_describes_a_model_file_as_stored(tmp_path, capsys):
    import json

    import numpy as np

    np.savez(tmp_path / "m.npz", w=np.ones((8, 16), np.float32), n=np.arange(3, dtype=np.int64))
    assert main(["inspect", str(tmp_path / "m.npz"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["version"] is None and summary["layout"] == "model file"
    by_name = {t["name"]: t for t in summary["tensors"]}
    assert by_name["w"]["bytes"] == 512 and by_name["n"]["dtype"] == "int64"
    assert main(["inspect", str(tmp_path / "m.npz")]) == 0
    assert "not a kformat container" in capsys.readouterr().out


def test_progress_reports_bytes_rate_and_eta(tmp_path, npz, capsys, monkeypatch):
    from kformat import cli

    seen = []

    class Recording(cli.Progress):
        def bytes(self, done_bytes, total_bytes):
            seen.append((done_bytes, total_bytes))
            super().bytes(done_bytes, total_bytes)

    monkeypatch.setattr(cli, "Progress", lambda verb, enabled=None: Recording(verb, True))
    assert main(["pack", str(npz), "-o", str(tmp_path / "m.kf"), "-q"]) == 0
    err = capsys.readouterr().err
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] > 0  # from nothing to every source byte
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert "pack" in err and ("B/s" in err or "ETA" in err)
    assert main(["verify", str(tmp_path / "m.kf")]) == 0
    assert seen[-1][0] == seen[-1][1] > 0


def test_json_errors_and_verbose_logging(tmp_path, npz, capsys):
    assert main(["inspect", str(tmp_path / "missing.kf"), "--json"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out) == {
        "error": f"{tmp_path / 'missing.kf'}: not found",
        "kind": "not_found",
        "type": "NotFound",
    }
    assert main(["pack", str(npz), "-o", str(tmp_path / "m.kf"), "-vv", "--json"]) == 0
    err = capsys.readouterr().err
    assert "kformat: INFO: reading" in err and "kformat: DEBUG: fc1.weight" in err
    assert main(["verify", str(tmp_path / "m.kf"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_the_command_freezes_its_imports_and_main_leaves_the_caller_alone(tmp_path, npz):
    """`kformat` and `python -m kformat` freeze the imports' objects out of the collector
    (30 ms of teardown at exit), then what main() made, and exit with main()'s status;
    main() called in-process changes nothing of the caller's."""
    code = "import atexit, gc\nimport kformat.cli as cli\nmade = []\n"
    code += "def fake():\n    print(gc.get_freeze_count())\n"
    code += "    made.extend([] for _ in range(5000))\n    return 3\n"
    code += "cli.main = fake\natexit.register(lambda: print(gc.get_freeze_count()))\ncli.run()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    at_start, at_exit = map(int, done.stdout.split())
    assert at_start > 10_000 and at_exit > at_start + 4000  # (the 5,000 lists main() made)
    before = gc.get_freeze_count()
    assert main(["pack", str(npz), "-o", str(tmp_path / "m.kf"), "-q"]) == 0
    assert gc.get_freeze_count() == before
