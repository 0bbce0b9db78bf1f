import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kformat.errors import RecipeError
from kformat.recipe import PRESETS, Rule, load_recipe, parse_rule, parse_rule_override, plan, recipe_from_dict


@st.composite
def rules(draw):
    method = draw(st.sampled_from(["kmeans", "linear", "fp16", "raw"]))
    fields = {"method": method}
    if method in ("kmeans", "linear"):
        fields["bits"] = draw(st.integers(1, 8))
        gran = draw(st.sampled_from(["tensor", "row", "group"]))
        fields["granularity"] = gran
        if gran == "group":
            fields["group_size"] = draw(st.integers(1, 512))
        fields["codec"] = draw(st.sampled_from([None, "png", "zstd", "raw"]))
        prune = draw(st.sampled_from([None, "fraction", "threshold"]))
        if prune == "fraction":
            fields["prune"] = draw(st.sampled_from([0.1, 0.25, 0.5, 0.9]))
        elif prune == "threshold":
            fields["prune_threshold"] = draw(st.sampled_from([0.001, 0.5, 2.0]))
        if method == "kmeans":
            fields["codebook_dtype"] = draw(st.sampled_from(["float16", "float32"]))
            fields["ecq"] = draw(st.sampled_from([None, 0.0, 0.25, 1.5]))
    else:
        fields["codec"] = draw(st.sampled_from([None, "zstd", "raw"]))
    if draw(st.booleans()):
        fields["tile"] = (draw(st.integers(1, 4096)), draw(st.integers(1, 4096)))
    return Rule(**fields)


@given(rules())
@settings(max_examples=200, deadline=None)
def test_rule_text_round_trips(rule):
    assert parse_rule(rule.to_text()) == rule


@pytest.mark.parametrize(
    "text, message",
    [
        ("kmeans:9", "bits"),
        ("kmeans:x", "bits must be a whole number"),
        ("fp16,prune=0.5", "fp16 takes no prune"),
        ("fp16,codec=png", "fp16 stores values, and png cannot hold them"),
        ("kmeans:4,codec=gif", "codec"),
        ("kmeans:4,wat=1", "unknown option 'wat=1'"),
        ("huffman:4", "method"),
        ("kmeans:4,prune=1.5", "prune"),
        ("linear:4,ecq=0.2", "linear takes no ecq"),
        ("", "empty rule"),
    ],
)
def test_bad_rules_say_what_is_wrong(text, message):
    with pytest.raises(RecipeError, match=message):
        parse_rule(text)


def test_recipe_errors_name_the_field(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('default = "fp16"\n[[rules]]\nmatch = "fc*"\nmethod = "kmeans"\nbits = 12\n')
    with pytest.raises(RecipeError, match=r"r\.toml: rules\[0\]\.rule\.bits"):
        load_recipe(path)
    path.write_text('defualt = "fp16"\n')
    with pytest.raises(RecipeError, match="defualt: Extra inputs"):
        load_recipe(path)
    path.write_text('default = "fp16"\n[[rules]\n')
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="neither a preset"):
        load_recipe(tmp_path / "missing.toml")


def test_toml_and_json_recipes_load(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text(
        'name = "mine"\ndefault = "fp16"\ntile = [128, 1024]\n'
        '[[rules]]\nmatch = "fc1.*"\nrule = "kmeans:4,group=32"\n'
        '[[rules]]\nmatch = "*.weight"\nndim = 2\nmethod = "linear"\nbits = 8\ngranularity = "row"\n'
    )
    recipe = load_recipe(toml)
    assert recipe.rules[0].rule == parse_rule("kmeans:4,group=32")
    assert recipe.rules[1].rule == parse_rule("linear:8,row")
    js = tmp_path / "r.json"
    js.write_text(json.dumps(recipe.model_dump(mode="json")))
    assert load_recipe(js) == recipe


def test_every_preset_is_valid():
    for name in PRESETS:
        assert load_recipe(name).name == name


def _infos(model):
    return [(n, a.shape, a.dtype) for n, a in model.items()]


def test_mobile_plan_quantizes_first_fc_at_4_bits(model):
    decisions, unmatched = plan(load_recipe("mobile"), _infos(model))
    by = {d.name: d.rule.to_text() for d in decisions}
    assert by["fc1.weight"].startswith("kmeans:4")
    assert by["fc2.weight"].startswith("kmeans:8")
    assert by["features.0.weight"].startswith("fp16")
    assert by["bn.num_batches_tracked"].startswith("raw")
    assert by["fc1.bias"].startswith("raw")  # 300 elements < min_elements
    assert unmatched == []


def test_fallbacks_are_explained(model):
    recipe = recipe_from_dict({"default": "kmeans:4", "min_elements": 100})
    decisions = {d.name: d for d in plan(recipe, _infos(model))[0]}
    assert decisions["fc1.bias"].rule.method == "fp16" and "rank >= 2" in decisions["fc1.bias"].reason
    assert decisions["fc2.bias"].rule.method == "raw" and "min_elements" in decisions["fc2.bias"].reason
    assert decisions["bn.num_batches_tracked"].rule.method == "raw"
    assert "not floating point" in decisions["bn.num_batches_tracked"].reason


def test_first_matching_rule_wins_and_unmatched_are_reported(model):
    recipe = load_recipe("fp16").with_rules(
        [
            parse_rule_override("fc*.weight=kmeans:2"),
            parse_rule_override("fc1.weight=kmeans:8"),
            parse_rule_override("decoder.*=raw"),
        ]
    )
    decisions, unmatched = plan(recipe, _infos(model))
    assert {d.name: d.rule.bits for d in decisions}["fc1.weight"] == 2
    assert unmatched == [
        "rules[1] (match='fc1.weight') matched no tensor",
        "rules[2] (match='decoder.*') matched no tensor",
    ]


def test_a_presets_own_rules_that_match_nothing_are_not_reported(model):
    """q4 has rules for depthwise kernels, embeddings and convolutions: on a model without some
    of them that is no mistake. A rule the user adds to it still is."""
    recipe = load_recipe("q4")
    assert plan(recipe, _infos(model))[1] == []
    with_extra = recipe.with_rules([parse_rule_override("decoder.*=raw")])
    assert plan(with_extra, _infos(model))[1] == ["rules[0] (match='decoder.*') matched no tensor"]
    own = recipe_from_dict({"name": "mine", "rules": [r.model_dump() for r in recipe.rules]})
    assert plan(own, _infos(model))[1]  # the same rules in a recipe of the user's own: reported


def test_rule_override_syntax():
    with pytest.raises(RecipeError, match="GLOB=RULE"):
        parse_rule_override("kmeans:4")
    assert parse_rule_override("a.*=linear:4,row").match == "a.*"


def test_fp16_input_with_fp16_rule_is_stored_raw():
    decisions, _ = plan(load_recipe("fp16"), [("w", (64, 64), np.dtype(np.float16))])
    assert decisions[0].rule.method == "raw"


def test_mobile_picks_fully_connected_layers_by_role_and_size():
    """On a transformer the first rank-2 tensor is an embedding table; mobile's 4-bit layer is
    the largest fully connected layer, and embeddings stay fp16."""
    tensors = [
        ("embeddings.word_embeddings.weight", (30522, 384), np.dtype(np.float32)),
        ("embeddings.position_embeddings.weight", (512, 384), np.dtype(np.float32)),
        ("encoder.layer.0.attention.self.query.weight", (384, 384), np.dtype(np.float32)),
        ("encoder.layer.0.intermediate.dense.weight", (1536, 384), np.dtype(np.float32)),
        ("encoder.layer.0.output.dense.weight", (384, 1536), np.dtype(np.float32)),
        ("encoder.layer.0.output.LayerNorm.weight", (384,), np.dtype(np.float32)),
        ("conv.weight", (64, 32, 3, 3), np.dtype(np.float32)),
    ]
    decisions, unmatched = plan(load_recipe("mobile"), tensors)
    rules = {d.name: d.rule.to_text() for d in decisions}
    assert rules["embeddings.word_embeddings.weight"] == "fp16,codec=zstd"
    assert rules["embeddings.position_embeddings.weight"] == "fp16,codec=zstd"
    first_of_the_largest = rules["encoder.layer.0.intermediate.dense.weight"]
    assert first_of_the_largest == "kmeans:4,codec=zstd,ecq=0.25"
    assert rules["encoder.layer.0.output.dense.weight"] == "kmeans:8,codec=zstd,ecq=0.5"
    assert rules["encoder.layer.0.attention.self.query.weight"] == "kmeans:8,codec=zstd,ecq=0.5"
    assert rules["conv.weight"] == "fp16,codec=zstd" and not unmatched


def test_role_and_largest_selectors_in_recipes():
    recipe = recipe_from_dict(
        {
            "rules": [
                {"role": "embedding", "rule": "kmeans:8,row"},
                {"match": "*.weight", "largest": True, "rule": "kmeans:2"},
            ]
        }
    )
    tensors = [
        ("tok_embeddings.weight", (1000, 8), np.dtype(np.float32)),
        ("a.weight", (64, 64), np.dtype(np.float32)),
        ("b.weight", (64, 128), np.dtype(np.float32)),
    ]
    decisions, _ = plan(recipe, tensors)
    assert [d.rule.to_text() for d in decisions] == ["kmeans:8,row", "fp16", "kmeans:2"]
    with pytest.raises(RecipeError, match="role"):
        recipe_from_dict({"rules": [{"role": "attention", "rule": "fp16"}]})


def test_tiles_are_whole_rows_unless_a_recipe_or_rule_says_otherwise(tmp_path):
    """Without a tile in the recipe or rule, a tile spans its tensor's rows (at most 65536
    wide) and holds about 2^20 values, so it decodes straight into the output's rows."""
    import kformat
    from kformat.recipe import auto_tile, recipe_from_dict

    assert auto_tile((4096, 4096)) == (256, 4096)
    assert auto_tile((4096, 25088)) == (41, 25088)
    assert auto_tile((3, 70000)) == (3, 65536)
    assert auto_tile((1, 7)) == (1, 7)
    rng = np.random.default_rng(4)
    weights = {"wide": rng.standard_normal((100, 20000)).astype(np.float32)}
    report = kformat.pack(weights, tmp_path / "auto.kf", "kmeans4")
    entry = report.manifest.tensors[0]
    assert tuple(entry.tile) == (52, 20000) and all(t.cols == 20000 for t in entry.tiles)
    recipe = recipe_from_dict({"name": "r", "default": "kmeans:4", "tile": [64, 4096]})
    explicit = kformat.pack(weights, tmp_path / "set.kf", recipe)
    assert tuple(explicit.manifest.tensors[0].tile) == (64, 4096)
    ruled = kformat.pack(weights, tmp_path / "rule.kf", "kmeans4", rules=["wide=kmeans:4,tile=16x512"])
    assert tuple(ruled.manifest.tensors[0].tile) == (16, 512)
    a, b = (kformat.load_all(str(tmp_path / f))["wide"] for f in ("auto.kf", "set.kf"))
    np.testing.assert_array_equal(a, b)  # the same codes, cut differently
