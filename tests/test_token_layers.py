"""Neurons of token models (issue 37): a transformer's per-token dense layers, their maps on the patch grid,
the class token counted in ``r_p`` and absorbed as a constant, a trained ViT explained end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from conceptree.attribution import CRPEngine
from conceptree.attribution import rules as R
from conceptree.attribution._forward import token_grid
from conceptree.errors import UnsupportedModelError

SHARED = Path(__file__).resolve().parents[2] / "shared"
DIGITS = Path(__file__).resolve().parents[1] / "docs" / "results" / "vit_mnist" / "digits"


def test_the_token_layernorm_rule_equals_gradient_times_input_with_the_deviation_held_constant():
    """The slow formula: autograd through ``g (x - mean) / sd.detach() + b`` (LXT's LayerNorm), relevance
    ``x * d(y . R / y) / dx``; the bias keeps its share ``b / y``."""
    gen = torch.Generator().manual_seed(0)
    norm = nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, generator=gen, dtype=torch.float64) + 0.5)
        norm.bias.copy_(torch.randn(6, generator=gen, dtype=torch.float64))
    x = torch.randn(1, 5, 6, generator=gen, dtype=torch.float64)
    rel = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    rule = R.TokenLayerNormRule(None, x, norm.weight, norm.bias, norm.eps, epsilon=0.0)
    ((_, got),) = rule.backward(rel)
    for row in range(3):
        xin = x.clone().requires_grad_(True)
        mean = xin.mean(-1, keepdim=True)
        sd = ((xin - mean).pow(2).mean(-1, keepdim=True) + norm.eps).sqrt().detach()
        y = (xin - mean) / sd * norm.weight + norm.bias
        (grad,) = torch.autograd.grad(y, xin, (rel[row : row + 1] / y).detach())
        torch.testing.assert_close(got[row : row + 1], (xin * grad).detach(), rtol=1e-10, atol=1e-12)
    centred = (x - x.mean(-1, keepdim=True)) * rule.scale
    kept = (rel * centred / (centred + norm.bias)).sum((1, 2))  # what the bias does not absorb
    torch.testing.assert_close(got.sum((1, 2)), kept, rtol=1e-10, atol=1e-12)


def test_token_grid_takes_the_smallest_prefix_that_leaves_a_patch_grid():
    assert token_grid(197, 224, 224) == (1, 14, 14)  # ViT-B/16: one class token
    assert token_grid(201, 224, 224) == (5, 14, 14)  # a class token and four registers
    assert token_grid(50, 28, 28) == (1, 7, 7)  # the MNIST ViT
    assert token_grid(196, 224, 224) == (0, 14, 14)  # no class token (global pooling)
    with pytest.raises(UnsupportedModelError, match="not a patch grid"):
        token_grid(3, 28, 30)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    nn.init.normal_(model.class_token)
    engine = CRPEngine(model, dtype=torch.float64)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return engine, engine.attribute(x)


def test_the_mlp_hidden_layers_are_token_neurons_with_maps_on_the_patch_grid(tiny_vit):
    engine, attribution = tiny_vit
    kinds = {layer.name: (layer.kind, layer.default) for layer in engine.all_layers}
    assert kinds["encoder.layers.encoder_layer_0.mlp.0"] == ("token", True)  # feeds the GELU
    assert kinds["encoder.layers.encoder_layer_0.mlp.3"] == ("token", False)  # the MLP's output projection
    name = "encoder.layers.encoder_layer_1.mlp.0"
    assert attribution.layer_relevance[name].shape == (32, 4, 4)  # 32x32 input, 8-pixel patches
    assert attribution.token_relevance[name].shape == (32, 1)  # the class token, not drawn
    total = attribution.layer_relevance[name].flatten(1).sum(1) + attribution.token_relevance[name][:, 0]
    assert torch.allclose(attribution.channel_relevance(name).double(), total.float().double(), rtol=1e-6)
    # the last block's MLP sees the relevance on the class token only: the head reads that token
    assert float(attribution.token_relevance[name].abs().sum()) > 1e3 * float(attribution.layer_relevance[name].abs().sum())


def test_the_logit_is_the_heatmap_plus_what_the_class_token_absorbs(tiny_vit):
    engine, attribution = tiny_vit
    absorbed = engine.absorbed_by_constants(attribution)
    logit = float(attribution.logits[attribution.target])
    assert float(attribution.heatmap.sum()) + float(absorbed[0]) == pytest.approx(logit, rel=1e-4)  # epsilon-stabilised rules
    assert abs(float(absorbed[0])) > 1e-3 * abs(logit)  # the class token is a real share, not round-off


def test_each_token_neuron_conserves_to_its_map_and_the_class_token(tiny_vit):
    """``sum(y_p) + c_p = r_p``: the conditional map of a token neuron, started on all its tokens (class
    token included), reaches the input except for what ends on the class token."""
    engine, attribution = tiny_vit
    name = "encoder.layers.encoder_layer_0.mlp.0"
    r = attribution.channel_relevance(name).double()
    channels = torch.topk(r.abs(), 4).indices.tolist()
    maps = engine.neuron_maps(attribution, channels={name: channels})
    absorbed = engine.absorbed_by_constants(attribution, [{name: [c]} for c in channels])
    np.testing.assert_allclose(maps.map_sums + absorbed.numpy(), r[channels].numpy(), rtol=1e-5)  # r_p in float32
    # the group map of the four is the sum of their maps (linearity through the token layout)
    group = engine.group_maps(attribution, [{name: channels}])[0]
    np.testing.assert_allclose(float(group.sum()), maps.map_sums.sum(), rtol=1e-6)


def test_a_batched_pass_gives_each_image_its_own_token_relevance(tiny_vit):
    engine, attribution = tiny_vit
    x = attribution.forward.input
    batch = engine.attribute_batch(torch.cat([x, torch.flip(x, (-1,))]), keep_maps=True)
    name = "encoder.layers.encoder_layer_0.mlp.0"
    offset = next(first for layer, first, _ in engine.neuron_columns() if layer == name)
    single = attribution.channel_relevance(name).double()
    np.testing.assert_allclose(batch.channel_relevance[0, offset : offset + 32].numpy(), single.numpy(), rtol=1e-5)  # single: float32
    assert batch.token_relevance[name].shape == (2, 32, 1)


def test_an_attention_with_a_norm_before_its_projection_is_refused_in_one_line():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=5,
                              scale_attn_norm=True).eval()
    engine = CRPEngine(model)
    with pytest.raises(UnsupportedModelError) as info:
        engine.attribute(torch.randn(1, 3, 32, 32))
    assert "scale_norm has no attention rule" in str(info.value) and "\n" not in str(info.value)


def _digits_vit() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny torchvision ViT trained on scikit-learn's bundled 8x8 digits in a few seconds (seeded):
    2x2 patches, 2 blocks; returns the model and the 397 held-out digits ``(N, 3, 8, 8)`` in ``[-1, 1]``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1) / 8.0 - 1.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = VisionTransformer(image_size=8, patch_size=2, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        batch = train[torch.randint(0, len(train), (256,), generator=torch.Generator().manual_seed(step))]
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimiser.step()
    return model.eval(), x[test], y[test]


def test_a_vit_trained_on_digits_is_explained_by_the_concept_pipeline():
    """A trained transformer, in CI without ../shared: the digit's strokes carry the positive relevance, and
    ConceptExplainer lists concepts whose neurons are MLP hidden units on the 4x4 patch grid."""
    from conceptree import ConceptExplainer
    from conceptree.models.base import Preprocessing

    model, x_test, y_test = _digits_vit()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    assert accuracy > 0.85
    engine = CRPEngine(model, dtype=torch.float64)
    ink_share, ink_area = [], []
    for i in range(40):
        attribution = engine.attribute(x_test[i : i + 1].double(), target=int(y_test[i]))
        heat = attribution.heatmap.numpy()
        ink = x_test[i, 0].numpy() > -0.5
        ink_share.append(heat[ink].clip(min=0).sum() / heat.clip(min=0).sum())
        ink_area.append(ink.mean())
    assert np.mean(ink_share) > np.mean(ink_area) + 0.1  # relevance sits on the strokes, beyond their area

    explainer = ConceptExplainer(model, preprocessing=Preprocessing(resize=8, crop=8))
    shown = ((x_test[0].permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
    from PIL import Image

    explanation = explainer.explain(Image.fromarray(shown), target=int(y_test[0]))
    concepts = explanation.concepts.concepts
    layers = {layer for concept in concepts for layer in concept.layer_histogram}
    assert layers <= {"conv_proj", "encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_1.mlp.0"}
    assert any(".mlp.0" in layer for layer in layers) and len(concepts) >= 2


@pytest.mark.skipif(not (SHARED / "models" / "vit_mnist" / "vit_mnist_gpu.pt").exists(), reason="needs ../shared")
def test_the_trained_mnist_vit_reads_real_digits_and_its_relevance_is_accounted_for():
    from PIL import Image

    from conceptree import load_model
    from conceptree.models.loading import preprocess

    loaded = load_model(f"mnist-vit:{SHARED / 'models' / 'vit_mnist' / 'vit_mnist_gpu.pt'}")
    engine = CRPEngine(loaded.model, dtype=torch.float64)
    for path in sorted(DIGITS.glob("digit*.png")):
        label = int(path.name[5])
        x, _ = preprocess(Image.open(path).convert("RGB"), loaded.preprocessing)
        attribution = engine.attribute(x.double())
        assert attribution.target == label, path.name
        absorbed = engine.absorbed_by_constants(attribution)
        assert float(attribution.heatmap.sum() + absorbed[0]) == pytest.approx(float(attribution.logits[label]), rel=1e-3)


def test_the_residual_stream_after_each_block_is_a_layer_that_carries_the_logit(tiny_vit):
    """The option the MLP units lack: a block's output (the residual stream, named by the block) as neurons.
    After the last block the stream holds the whole logit (a zero-bias final LayerNorm keeps none), on
    the class token; each stream neuron's map and what the constants keep add up to its ``r_p``."""
    engine, _ = tiny_vit  # default selection: the streams are listed, not selected
    streams = [layer for layer in engine.all_layers if layer.kind == "stream"]
    assert [layer.name for layer in streams] == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert not any(layer.default for layer in streams) and streams[0].channels == 16
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5).eval()
    torch.manual_seed(0)
    nn.init.normal_(model.heads.head.weight)
    nn.init.normal_(model.class_token)
    engine = CRPEngine(model, dtype=torch.float64, layers=["encoder.layers.encoder_layer_?"])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attribution = engine.attribute(x)
    last = float(attribution.channel_relevance("encoder.layers.encoder_layer_1").double().sum())
    assert last == pytest.approx(float(attribution.logits[attribution.target]), rel=1e-5)
    name = "encoder.layers.encoder_layer_0"
    r = attribution.channel_relevance(name).double()
    channels = torch.topk(r.abs(), 3).indices.tolist()
    maps = engine.neuron_maps(attribution, channels={name: channels})
    absorbed = engine.absorbed_by_constants(attribution, [{name: [c]} for c in channels])
    # rtol 1e-3: the stream's relevance passes the attention's and the residual sums' stabilisers (1e-6)
    np.testing.assert_allclose(maps.map_sums + absorbed.numpy(), r[channels].numpy(), rtol=1e-3)


@pytest.mark.parametrize("name, kwargs, size", [
    ("vit_tiny_patch16_224", {"img_size": 64, "depth": 2}, 64),
    ("deit_tiny_distilled_patch16_224", {"img_size": 64, "depth": 2}, 64),  # class and distillation tokens
    ("vit_tiny_r_s16_p8_224", {"depth": 2}, 224),  # hybrid: a ResNet stem under the transformer
])
def test_timm_token_models_conserve_once_the_constants_are_counted(name, kwargs, size):
    """Random weights, fixed seed: heatmap + what class/distillation tokens and LayerNorm biases keep = logit."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7, **kwargs).eval()
    engine = CRPEngine(model, dtype=torch.float64)
    assert any(layer.kind == "token" and layer.default for layer in engine.layers)
    attribution = engine.attribute(torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1),
                                               dtype=torch.float64))
    logit = float(attribution.logits[attribution.target])
    total = float(attribution.heatmap.sum()) + float(engine.absorbed_by_constants(attribution)[0])
    assert total == pytest.approx(logit, rel=1e-4)


def test_swin_windows_folded_into_the_batch_conserve():
    """Swin's window partition folds the windows into the batch and its shifts roll the map: the relevance
    batch stays outermost through the folds (each block of window rows goes through a rule as the pass's
    own batch), so a batch of conditional maps equals the maps one at a time and each conserves."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(2, 2, 1, 1), num_classes=3).eval()
    engine = CRPEngine(model, dtype=torch.float64)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attribution = engine.attribute(x)
    logit = float(attribution.logits[attribution.target])
    assert float(attribution.heatmap.sum()) + float(engine.absorbed_by_constants(attribution)[0]) == pytest.approx(
        logit, rel=1e-4)
    name = "layers.0.blocks.1.mlp.fc1"  # a shifted-window block's MLP: a pointwise layer on the 56x56 map
    r = attribution.channel_relevance(name).double()
    channels = torch.topk(r.abs(), 3).indices.tolist()
    together = engine.neuron_maps(attribution, channels={name: channels}, batch_size=3)
    alone = [engine.neuron_maps(attribution, channels={name: [c]}, batch_size=1) for c in channels]
    np.testing.assert_allclose(together.maps, np.concatenate([m.maps for m in alone]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(together.map_sums, r[channels].numpy(), rtol=1e-4)
