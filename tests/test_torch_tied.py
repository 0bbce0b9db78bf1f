"""Tied weights stored once and tied again on load; meta-device models left complete."""

import numpy as np
import pytest

import kformat
from kformat.errors import InputError, VersionError

torch = pytest.importorskip("torch")
kt = pytest.importorskip("kformat.torch")


class TiedLM(torch.nn.Module):
    """An embedding whose matrix is also the output projection, and a non-persistent
    position buffer, as in BERT- and GPT-class models."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("position_ids", torch.arange(8).expand((1, -1)), persistent=False)

    def forward(self, ids):
        return self.head(self.norm(self.embed(ids) + self.position_ids[:, : ids.shape[1], None]))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TiedLM().eval()


def test_tied_weights_are_stored_once_and_come_back_tied_on_meta(tmp_path, model):
    report = kt.save(model, tmp_path / "m.kf", recipe="kmeans8")
    assert report.manifest.aliases == {"head.weight": "embed.weight"}
    assert "aliases" in report.manifest.must_understand
    assert [t.name for t in report.manifest.tensors].count("embed.weight") == 1
    with kt.empty_weights():
        fresh = TiedLM()
    assert fresh.embed.weight.is_meta and not fresh.position_ids.is_meta
    kt.load_state_dict(fresh, str(tmp_path / "m.kf"))
    assert fresh.head.weight is fresh.embed.weight
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(fresh.eval()(ids), model(ids), atol=0.05)


def test_a_module_with_only_the_alias_gets_the_stored_tensor(tmp_path, model):
    """A module holding the file's alias but not the tensor it names (an output head loaded
    alone) is filled from the stored tensor, under the alias's name."""
    kt.save(model, tmp_path / "m.kf", recipe="kmeans8")
    head = torch.nn.Module()
    head.head = torch.nn.Linear(16, 50, bias=False)
    missing, unexpected = kt.load_state_dict(head, str(tmp_path / "m.kf"), strict=False)
    assert missing == [] and "embed.weight" in unexpected
    stored = kformat.load_all(str(tmp_path / "m.kf"))["embed.weight"]
    assert np.array_equal(head.head.weight.detach().numpy(), stored)


def test_alias_reads_as_the_same_tensor_everywhere(tmp_path, model):
    kt.save(model, tmp_path / "m.kf", recipe="raw")
    with kformat.open_model(str(tmp_path / "m.kf")) as lazy:
        assert lazy["head.weight"] is lazy["embed.weight"]
        assert list(lazy).index("head.weight") == list(lazy).index("embed.weight") + 1
    loaded = kformat.load_all(str(tmp_path / "m.kf"))
    assert loaded["head.weight"] is loaded["embed.weight"]
    kformat.unpack(str(tmp_path / "m.kf"), tmp_path / "back.pt")
    state = torch.load(tmp_path / "back.pt", weights_only=True)
    assert state["head.weight"].data_ptr() == state["embed.weight"].data_ptr()
    assert not kformat.verify(str(tmp_path / "m.kf"))
    kformat.pack(str(tmp_path / "m.kf"), tmp_path / "sharded", layout="sharded")
    assert kformat.open_model(str(tmp_path / "sharded")).aliases == {"head.weight": "embed.weight"}


def test_safetensors_deduplicated_file_loads_strictly(tmp_path, model):
    from safetensors.torch import save_model

    save_model(model, str(tmp_path / "m.safetensors"))  # drops head.weight, records it in metadata
    kformat.pack(tmp_path / "m.safetensors", tmp_path / "m.kf", "raw")
    fresh = TiedLM()
    assert kt.load_state_dict(fresh, str(tmp_path / "m.kf"), strict=True) == ([], [])
    assert fresh.head.weight is fresh.embed.weight
    torch.testing.assert_close(fresh.embed.weight, model.embed.weight, rtol=0, atol=0)
    assert kformat.compare(tmp_path / "m.safetensors", tmp_path / "m.kf").problems == []


def test_tensor_left_on_meta_is_named(tmp_path, model):
    kt.save(model, tmp_path / "m.kf", recipe="raw")
    with torch.device("meta"):
        fresh = TiedLM()
    with pytest.raises(InputError, match="position_ids.*empty_weights"):
        kt.load_state_dict(fresh, str(tmp_path / "m.kf"))


def test_alias_without_must_understand_or_to_nowhere_is_refused(tmp_path):
    from craft import rewrite_manifest

    kformat.pack({"a": np.ones((4, 4), np.float32)}, tmp_path / "m.kf", "raw")
    rewrite_manifest(tmp_path / "m.kf", tmp_path / "x.kf", lambda m: m.update(aliases={"b": "a"}))
    with pytest.raises(kformat.FormatError, match="must_understand"):
        kformat.open_model(str(tmp_path / "x.kf"))
    rewrite_manifest(
        tmp_path / "m.kf",
        tmp_path / "y.kf",
        lambda m: m.update(aliases={"b": "zz"}, must_understand=["aliases"]),
    )
    with pytest.raises(kformat.FormatError, match="not a stored tensor"):
        kformat.open_model(str(tmp_path / "y.kf"))
    rewrite_manifest(tmp_path / "m.kf", tmp_path / "z.kf", lambda m: m.update(must_understand=["teleport"]))
    with pytest.raises(VersionError, match="teleport"):
        kformat.open_model(str(tmp_path / "z.kf"))


def test_hugging_face_model_built_empty_loads_from_its_own_sharded_checkpoint(tmp_path):
    """A BERT masked-LM (tied decoder, non-persistent position buffers) saved by
    transformers as a sharded checkpoint without its tied weights, packed, then loaded into a
    model built under empty_weights(): strict, tied, and the same logits."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path / "hf", max_shard_size="50KB")
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1
    kformat.pack(tmp_path / "hf", tmp_path / "bert.kf", "lossless")
    with kt.empty_weights():
        fresh = transformers.BertForMaskedLM(config)
    assert all(p.is_meta for p in fresh.parameters())
    assert kt.load_state_dict(fresh, str(tmp_path / "bert.kf")) == ([], [])
    fresh.eval()
    decoder = fresh.cls.predictions.decoder.weight
    assert decoder is fresh.bert.embeddings.word_embeddings.weight and not decoder.is_meta
    ids = torch.randint(0, 300, (2, 12))
    assert torch.equal(fresh(ids).logits, model(ids).logits)
