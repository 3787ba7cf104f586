"""Layer methods equal captum's layer methods on Inseq's per-step prefix forward, for encoder, decoder and
decoder-only layers; the default layer (input embeddings) equals the input method; bad layers are refused."""

from __future__ import annotations

import pytest
import torch

from tests.naive import naive_layer_attribute
from tests.test_engine_equivalence import _assert_close

SOURCES = ["the cat sees a bird", "a dog"]
ENC_TARGETS = ["one fish likes bread", "the child"]
DEC_TARGETS = [SOURCES[0] + " and the dog eats", SOURCES[1] + " holds a book"]
KW = {"layer_integrated_gradients": {"n_steps": 8}, "layer_deeplift": {}, "layer_gradient_x_activation": {}}
LAYERS = [
    ("bart", "model.encoder.layers.0"),
    ("bart", "model.decoder.layers.1"),
    ("gpt2", "transformer.h.0"),
    ("llama", "model.layers.1"),
]


@pytest.mark.parametrize("method", list(KW))
@pytest.mark.parametrize(("name", "layer"), LAYERS)
def test_layer_methods_equal_captum_per_step(request, method, name, layer):
    am = request.getfixturevalue(name)
    targets = ENC_TARGETS if am.is_encoder_decoder else DEC_TARGETS
    out = am.attribute(
        SOURCES, targets, method=method, target_layer=layer, attribute_target=True, show_progress=False, **KW[method]
    )
    for i, (src, tgt) in enumerate(zip(SOURCES, targets, strict=True)):
        ref_src, ref_tgt = naive_layer_attribute(am, src, tgt, method, layer, True, **KW[method])
        _assert_close(out[i].source_attributions, ref_src, f"{name} {layer} {method} seq {i} source")
        _assert_close(out[i].target_attributions, ref_tgt, f"{name} {layer} {method} seq {i} target")


def test_default_layer_is_the_input_method(bart):
    kw = {"attribute_target": True, "show_progress": False}
    a = bart.attribute(SOURCES, ENC_TARGETS, method="layer_gradient_x_activation", **kw)
    b = bart.attribute(SOURCES, ENC_TARGETS, method="input_x_gradient", **kw)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.source_attributions, y.source_attributions)


@pytest.mark.parametrize(
    ("layer", "match"), [("model.nope", "not a module"), ("model.shared", "ran 0 times|runs once")]
)
def test_bad_layers_are_refused_and_the_model_is_left_clean(bart, layer, match):
    hooks_before = sum(len(m._forward_hooks) for m in bart.model.modules())
    with pytest.raises(ValueError, match=match):
        bart.attribute(SOURCES, ENC_TARGETS, method="layer_gradient_x_activation", target_layer=layer,
                       show_progress=False)  # fmt: skip
    assert sum(len(m._forward_hooks) for m in bart.model.modules()) == hooks_before


@pytest.mark.parametrize(
    "method, args",
    [
        ("layer_gradient_x_activation", {"target_layer": "model.encoder.layers.0"}),
        ("layer_integrated_gradients", {"target_layer": "model.encoder.layers.0", "n_steps": 4}),
        ("layer_deeplift", {}),
    ],
)
def test_layer_methods_run_in_the_pipeline(tmp_path, method, args):
    """On the toy translator: an encoder layer's rows are source positions, so the source table fills."""
    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.runner import run
    from tests.test_pipeline import check_complete, read_table

    (tmp_path / "c.txt").write_text("the cat sees a bird\na dog runs\n")
    out = tmp_path / "run"
    run(PipelineConfig(input=str(tmp_path / "c.txt"), output=str(out), use_ray=False, method=method,
                       method_args=args), progress=False)  # fmt: skip
    check_complete(out, 2)
    assert read_table(out, "source_attributions").height > 0
