"""The built-in example models' shapes: what the benchmarks' figures are about."""

import math

from kformat.synthetic import bert_base_shapes, vgg16_shapes


def test_bert_base_has_its_parameters_spread_over_many_tensors():
    shapes = dict(bert_base_shapes())
    assert len(shapes) == 197
    total = sum(math.prod(s) for s in shapes.values())
    assert total == 108_891_648  # BERT-base without its pooler
    largest = max(math.prod(s) for s in shapes.values())
    assert largest == 30522 * 768 and largest < total / 4
    assert shapes["encoder.layer.11.intermediate.dense.weight"] == (3072, 768)


def test_vgg16_has_one_dominant_layer():
    shapes = dict(vgg16_shapes())
    total = sum(math.prod(s) for s in shapes.values())
    assert total == 138_357_544
    assert math.prod(shapes["classifier.0.weight"]) / total > 0.7
