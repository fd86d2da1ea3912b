"""Transformer rows of the rule table (issue 37, first part): CP-LRP through ``nn.MultiheadAttention`` and
``expand``, each against a slow formula; a torchvision ViT runs through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from conceptree.attribution import CRPEngine
from conceptree.attribution.rules import AttentionRule, ExpandRule


def _slow_attention(module: nn.MultiheadAttention, x: np.ndarray, rel: np.ndarray, eps: float) -> np.ndarray:
    """CP-LRP by loops over tokens and features: the epsilon rule (no bias in the denominators) through
    the output projection, ``o_i = sum_j A_ij v_j`` with ``A`` constant, and the value projection.
    ``x`` ``(N, E)`` (one image), ``rel`` ``(N, E)``; returns the input relevance ``(N, E)``."""
    n, e = x.shape
    heads, width = module.num_heads, e // module.num_heads
    w = module.in_proj_weight.detach().double().numpy()
    b = module.in_proj_bias.detach().double().numpy()
    w_q, w_k, w_v = w[:e], w[e:2 * e], w[2 * e:]
    q, k, v = x @ w_q.T + b[:e], x @ w_k.T + b[e:2 * e], x @ w_v.T + b[2 * e:]
    w_o = module.out_proj.weight.detach().double().numpy()

    def stab(z):
        return z + eps * np.where(z >= 0, 1.0, -1.0)

    o = np.zeros((n, e))
    attention = np.zeros((heads, n, n))
    for h in range(heads):
        cols = slice(h * width, (h + 1) * width)
        scores = q[:, cols] @ k[:, cols].T / np.sqrt(width)
        attention[h] = np.exp(scores - scores.max(1, keepdims=True))
        attention[h] /= attention[h].sum(1, keepdims=True)
        o[:, cols] = attention[h] @ v[:, cols]
    z_out = o @ w_o.T
    rel_o = np.zeros((n, e))
    for i in range(n):
        for c in range(e):  # output feature c of token i spreads over the mixed features d
            for d in range(e):
                rel_o[i, d] += o[i, d] * w_o[c, d] * rel[i, c] / stab(z_out[i, c])
    rel_v = np.zeros((n, e))
    for h in range(heads):
        for d in range(h * width, (h + 1) * width):
            for i in range(n):  # mixed feature d of token i spreads over the tokens j it averaged
                for j in range(n):
                    rel_v[j, d] += attention[h, i, j] * v[j, d] * rel_o[i, d] / stab(o[i, d])
    z_v = x @ w_v.T
    rel_x = np.zeros((n, e))
    for j in range(n):
        for d in range(e):
            rel_x[j] += x[j] * w_v[d] * rel_v[j, d] / stab(z_v[j, d])
    return rel_x


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_rule_equals_the_slow_formula_and_conserves(batch_first):
    torch.manual_seed(0)
    module = nn.MultiheadAttention(8, 2, batch_first=batch_first).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    rel = torch.randn(3, 5, 8, dtype=torch.float64)
    shaped = x if batch_first else x.transpose(0, 1)
    with torch.no_grad():  # as the engine builds its rules
        rule = AttentionRule.for_multihead(None, module, shaped, shaped, shaped, epsilon=1e-9)
        ((_, got),) = rule.backward(rel if batch_first else rel.transpose(0, 1))
    got = got if batch_first else got.transpose(0, 1)
    for b in range(rel.shape[0]):
        want = _slow_attention(module, x[0].numpy(), rel[b].numpy(), 1e-9)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-7, atol=1e-9)
    # no bias in the denominators: the relevance is passed on whole, up to epsilon over the few small
    # denominators of random signed data (1e-5 relative here)
    np.testing.assert_allclose(got.sum((1, 2)).numpy(), rel.sum((1, 2)).numpy(), rtol=1e-4)


def test_attention_rule_refuses_what_it_does_not_model():
    module = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
    x = torch.randn(1, 3, 8)
    with pytest.raises(Exception, match="no attention rule"):
        AttentionRule.for_multihead(None, module, x, torch.randn(1, 3, 4), torch.randn(1, 3, 4))


def test_expand_rule_sums_over_the_copies():
    rule = ExpandRule(None, torch.Size([1, 1, 4]), torch.Size([1, 6, 4]))
    rel = torch.arange(2 * 6 * 4, dtype=torch.float64).reshape(2, 6, 4)
    ((_, got),) = rule.backward(rel)
    assert got.shape == (2, 1, 4) and torch.equal(got, rel.sum(1, keepdim=True))


def test_a_torchvision_vit_runs_through_the_engine():
    """The patch embedding conserves what reaches it (the heatmap's sum is its channels' relevance); the
    class token and the position embedding are constants that absorb their share, as biases do."""
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: all logits 0
    engine = CRPEngine(model, dtype=torch.float64)
    attribution = engine.attribute(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert [layer.name for layer in engine.layers] == [
        "conv_proj", "encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_1.mlp.0"]
    patch = float(attribution.channel_relevance("conv_proj").sum())
    assert float(attribution.heatmap.sum()) == pytest.approx(patch, rel=1e-6) and patch != 0.0


def test_a_timm_vit_with_an_optional_forward_argument_traces_and_its_only_first_layer_is_the_patch_embedding():
    """timm's ``forward(x, attn_mask=None)``: the optional argument takes its default, and it does not make
    the layers it reaches "first layers" (the flat rule stays on the patch embedding). timm's ``Attention``
    is one CP-LRP node. Conservation on random timm ViTs is not claimed yet (issue 37)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2,
                              num_classes=5).eval()
    engine = CRPEngine(model, dtype=torch.float64)
    assert {node.name for node in engine._graph.first_layers} == {"patch_embed_proj"}
    forward = engine.forward(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    kinds = {node.name: type(rule).__name__ for node, rule in forward.rules.items()}
    assert kinds["blocks_0_attn"] == "AttentionRule" and kinds["head"] == "EpsilonLinearRule"
    attribution = engine.attribute(forward)
    assert float(attribution.heatmap.sum()) == pytest.approx(
        float(attribution.channel_relevance("patch_embed.proj").sum()), rel=1e-6)


def test_repeat_rule_sums_over_the_tiles():
    from conceptree.attribution.rules import RepeatRule

    x = torch.randn(1, 2, 3, dtype=torch.float64)
    out = x.repeat(1, 4, 2)
    rel = torch.randn(5, *out.shape[1:], dtype=torch.float64)
    ((_, got),) = RepeatRule(None, x.shape, (1, 4, 2)).backward(rel)
    xin = x.expand(5, -1, -1).clone().requires_grad_(True)
    (slow,) = torch.autograd.grad(xin.repeat(1, 4, 2), xin, rel)  # the vector-Jacobian product of the tiling
    torch.testing.assert_close(got, slow)


def test_matmul_rule_gives_the_values_all_relevance_when_the_weights_are_a_softmax():
    """``softmax(a) @ v``: CP-LRP through the product (the weights constant), against the slow formula
    ``R_v[j, d] = sum_i A[i, j] v[j, d] R[i, d] / y[i, d]``; two activations split it half and half."""
    from conceptree.attribution.rules import MatmulRule

    gen = torch.Generator().manual_seed(0)
    attention = torch.softmax(torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64), -1)
    v = torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64)
    y = attention @ v
    rel = torch.randn(3, 2, 4, 3, generator=gen, dtype=torch.float64)
    ((_, got),) = MatmulRule([None, "v"], attention, v, y, 0.0).backward(rel)
    slow = torch.einsum("bhij,bhjd,rhid->rhjd", attention, v, rel / y)
    torch.testing.assert_close(got, slow)
    torch.testing.assert_close(got.sum((1, 2, 3)), rel.sum((1, 2, 3)))  # conserving
    (_, half_a), (_, half_v) = MatmulRule(["a", "v"], attention, v, y, 0.0).backward(rel)
    torch.testing.assert_close(half_v, slow / 2)
    torch.testing.assert_close((half_a + 0).sum((1, 2, 3)) + half_v.sum((1, 2, 3)), rel.sum((1, 2, 3)))


class _TokenMixer(nn.Module):
    """A one-head attention block written with matrix products or with ``F.scaled_dot_product_attention``."""

    def __init__(self, fused: bool, indexed: bool = False) -> None:
        super().__init__()
        self.fused, self.indexed = fused, indexed
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).reshape(-1, tokens.shape[1], 3, 1, 8).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[0], qkv[1], qkv[2]) if self.indexed else qkv.unbind(0)
        if self.fused:
            mixed = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            mixed = (q @ k.transpose(-2, -1) * 8**-0.5).softmax(-1) @ v
        tokens = tokens + self.proj(mixed.transpose(1, 2).reshape(-1, tokens.shape[1], 8))
        return self.head(tokens.mean(1))


def test_attention_in_matrix_products_and_in_sdpa_get_the_same_cp_lrp_relevance():
    """The two spellings of one attention (timm switches between them with ``fused_attn``) explain alike, the
    batch-moving ``permute(2, 0, ...).unbind(0)`` of the packed qkv is rewritten batch-first, and the input
    heatmap conserves the logit."""
    torch.manual_seed(0)
    explicit = _TokenMixer(fused=False).double().eval()
    fused = _TokenMixer(fused=True).double().eval()
    fused.load_state_dict(explicit.state_dict())
    indexed = _TokenMixer(fused=False, indexed=True).double().eval()  # qkv[0], qkv[1], qkv[2] (CaiT)
    indexed.load_state_dict(explicit.state_dict())
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    heatmaps = []
    for model in (explicit, fused, indexed):
        engine = CRPEngine(model, dtype=torch.float64, example_input=x)
        attribution = engine.attribute(x, target=0)
        heatmaps.append(attribution.heatmap)
        assert float(attribution.heatmap.sum()) == pytest.approx(float(attribution.logits[0]), rel=1e-4)  # stabilisers
    torch.testing.assert_close(heatmaps[0], heatmaps[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(heatmaps[0], heatmaps[2], rtol=1e-9, atol=1e-12)


def test_einsum_rule_equals_the_matmul_rule_on_the_same_attention():
    from conceptree.attribution.rules import EinsumRule, MatmulRule

    gen = torch.Generator().manual_seed(0)
    attention = torch.softmax(torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64), -1)
    v = torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64)
    y = attention @ v
    rel = torch.randn(3, 2, 4, 3, generator=gen, dtype=torch.float64)
    ((_, want),) = MatmulRule([None, "v"], attention, v, y, 1e-9).backward(rel)
    ((_, got),) = EinsumRule("bhij,bhjd->bhid", [None, "v"], attention, v, y, 1e-9).backward(rel)
    torch.testing.assert_close(got, want)
    q = torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64)
    scores = q @ v.transpose(-1, -2)
    relq = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    want_pair = MatmulRule(["q", "k"], q, v.transpose(-1, -2), scores, 1e-9).backward(relq)
    got_pair = EinsumRule("bhid,bhjd->bhij", ["q", "k"], q, v, scores, 1e-9).backward(relq)
    torch.testing.assert_close(got_pair[0][1], want_pair[0][1])
    torch.testing.assert_close(got_pair[1][1], want_pair[1][1].transpose(-1, -2))


def test_repeat_interleave_rule_sums_over_the_copies():
    from conceptree.attribution.rules import RepeatInterleaveRule

    x = torch.randn(1, 3, 2, dtype=torch.float64)
    out = x.repeat_interleave(4, 1)
    rel = torch.randn(5, *out.shape[1:], dtype=torch.float64)
    ((_, got),) = RepeatInterleaveRule(None, 4, 1).backward(rel)
    xin = x.expand(5, -1, -1).clone().requires_grad_(True)
    (slow,) = torch.autograd.grad(xin.repeat_interleave(4, 1), xin, rel)
    torch.testing.assert_close(got, slow)
