"""Rows and tracing rules that the attention zoo needed (issue 37, coverage): each against an equivalent
spelling already explained, or a slow formula, plus the refusals that remain."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conceptree.attribution import CRPEngine
from conceptree.attribution._forward import token_grid
from conceptree.attribution.tracing import guards
from conceptree.errors import InputError, UnsupportedModelError


def _heatmap(model: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    engine = CRPEngine(model.eval().double(), example_input=x.double(), **kwargs)
    return engine.attribute(x.double(), target=0).heatmap


def _logit(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model.eval().double()(x.double())[0, 0])


class _Tokens(nn.Module):
    """Patch embedding to ``(B, N, C)`` tokens, one block-specific op, mean over tokens, a head."""

    def __init__(self, op: nn.Module, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 2, 2)
        self.op = op
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.op(torch.relu(t)).mean(1))


@torch.fx.wrap
def _sincos_grid(rows: int, cols: int, width: int) -> torch.Tensor:
    """A position grid built from sizes only (timm's ``_build_grid``): no rule is registered for it."""
    pos = torch.arange(rows * cols, dtype=torch.float64)[:, None] * torch.arange(1, width + 1, dtype=torch.float64)
    return torch.sin(pos / (rows * cols))


class _ShapeGrid(nn.Module):
    def forward(self, t):
        return t * 1.0 + _sincos_grid(4, t.shape[1] // 4, t.shape[2]).to(t.dtype)


def test_a_position_grid_built_from_the_input_shape_is_a_constant():
    """Sizes read off the input (``t.shape[1]``) are not its values: the grid function is a constant,
    not an unsupported op, and its addend is a bias (all relevance to the tokens)."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 16)
    model = _Tokens(_ShapeGrid())
    assert float(_heatmap(model, x).sum()) == pytest.approx(_logit(model, x), rel=1e-4)


class _Negated(nn.Module):
    def forward(self, t):
        half = t.shape[-1] // 2
        rotated = torch.cat([-t[..., half:], t[..., :half]], -1)  # rotary embeddings' rotate_half
        return t * 0.5 + rotated * 0.25


def test_negation_keeps_each_elements_relevance():
    """``-x`` passes relevance unchanged: rotate_half then a constant-weighted sum conserves."""
    torch.manual_seed(1)
    x = torch.rand(1, 3, 8, 8)
    model = _Tokens(_Negated())
    assert float(_heatmap(model, x).sum()) == pytest.approx(_logit(model, x), rel=1e-4)


class _IntGrid(nn.Module):
    """``int(n ** .5)`` of the token count (timm's NesT, ConViT): traced with the example, guarded."""

    def forward(self, t):
        side = int(t.shape[1] ** 0.5)
        grid = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
        return F.avg_pool2d(grid, 1).flatten(2).transpose(1, 2)


def test_int_of_a_traced_size_follows_the_example_and_guards_other_sizes():
    torch.manual_seed(2)
    x = torch.rand(1, 3, 8, 8)
    model = _Tokens(_IntGrid()).eval()
    engine = CRPEngine(model, example_input=x)
    assert 4 in guards(engine.graph_module).values()  # side = int(16 ** .5), read from the example
    attribution = engine.attribute(x, target=0)
    assert float(attribution.heatmap.sum()) == pytest.approx(float(attribution.logits[0]), rel=1e-4)
    with pytest.raises(InputError, match="traced with") as info:
        engine.attribute(torch.rand(1, 3, 12, 12), target=0)
    assert "\n" not in str(info.value)


class _Written(nn.Module):
    """A constant table written in place (ConViT's relative indices) and an attention logit written in
    place before its softmax (MViTv2's relative positions): neither receives relevance."""

    def forward(self, t):
        n = int(t.shape[1])  # a Python int (ConViT's int(num_patches)): traced with the example
        table = torch.zeros(n, n, dtype=t.dtype)
        table[:, 0] = 1.0
        logits = t @ t.transpose(1, 2)
        logits[:, :, :1] = logits[:, :, :1] + table[:, :1]
        return torch.softmax(logits, -1) @ t


class _WrittenFeature(nn.Module):
    def forward(self, t):
        y = t * 1.0
        y[:, 0] = t[:, 1]
        return y


def test_in_place_writes_into_constants_and_gates_are_explained_and_into_features_refused():
    torch.manual_seed(3)
    x = torch.rand(1, 3, 8, 8)
    model = _Tokens(_Written())
    assert float(_heatmap(model, x).sum()) == pytest.approx(_logit(model, x), rel=1e-4)
    with pytest.raises(UnsupportedModelError, match="modifies in place") as info:
        _heatmap(_Tokens(_WrittenFeature()), x)
    assert "\n" not in str(info.value)


class _GatedAttention(nn.Module):
    """ConViT's gated positional attention: ``((1 - s) softmax(a) + s softmax(p)) / sum`` applied to ``v``."""

    def __init__(self, gated: bool) -> None:
        super().__init__()
        self.gating = nn.Parameter(torch.tensor(0.3))
        self.pos = nn.Parameter(torch.randn(16, 16))
        self.gated = gated

    def forward(self, t):
        scores = torch.softmax(t @ t.transpose(1, 2) * 0.3, -1)
        if self.gated:
            s = torch.sigmoid(self.gating)
            attention = (1.0 - s) * scores + s * torch.softmax(self.pos, -1)
            attention = attention / attention.sum(-1, keepdim=True)
        else:
            attention = scores
        return attention @ t


def test_gates_combined_by_arithmetic_are_attention_weights_held_constant():
    """Slow formula: CP-LRP through ``o = A t`` with the combined weights ``A`` constant,
    ``R_t[j] = sum_i A_ij t_j R_o[i] / o_i`` (epsilon 0 here, well-conditioned values)."""
    torch.manual_seed(4)
    x = torch.rand(1, 3, 8, 8)
    model = _Tokens(_GatedAttention(True)).eval().double()
    engine = CRPEngine(model, example_input=x.double(), layers=["embed"])
    attribution = engine.attribute(x.double(), target=0)
    with torch.no_grad():
        t = torch.relu(model.embed(x.double()).flatten(2).transpose(1, 2))[0]
        s = torch.sigmoid(model.op.gating)
        a = (1 - s) * torch.softmax(t @ t.T * 0.3, -1) + s * torch.softmax(model.op.pos, -1)
        a = a / a.sum(-1, keepdim=True)
        o = a @ t
        mean = o.mean(0)
        w = model.head.weight[0]
        stab = lambda z: z + 1e-6 * torch.where(z >= 0, 1.0, -1.0)  # noqa: E731 - the rules' stabiliser
        rel_mean = mean * w * float(attribution.logits[0]) / stab((mean * w).sum())  # epsilon rule of the head, no bias
        rel_o = o / o.shape[0] * rel_mean / stab(mean)  # the mean over tokens: shares o_i / (n mean)
        rel_t = t * (a.T @ (rel_o / stab(o)))
    ours = attribution.layer_relevance["embed"].flatten(1).T  # (C, H, W) -> (tokens, channels)
    assert torch.allclose(ours, rel_t, rtol=1e-9, atol=1e-12)


class _LinearAttention(nn.Module):
    """EfficientViT-MIT's ReLU linear attention: ``(v k^T) q / (k_sum q)``, a broadcast normaliser."""

    def forward(self, t):
        q, k = torch.relu(t), torch.relu(t)
        kv = t.transpose(1, 2) @ k  # (B, C, C)
        out = q @ kv.transpose(1, 2)
        norm = q @ k.sum(1, keepdim=True).transpose(1, 2)  # (B, N, 1)
        return out / (norm + 1e-6)


class _ElementwiseRatio(nn.Module):
    def forward(self, t):
        return t / (torch.relu(t) + 1.0)


def test_a_broadcast_normaliser_is_held_constant_and_an_elementwise_ratio_refused():
    torch.manual_seed(5)
    x = torch.rand(1, 3, 8, 8)
    engine = CRPEngine(_Tokens(_LinearAttention()).eval(), example_input=x)
    engine.attribute(x, target=0)  # explained: the normaliser is a statistic of the keys and queries
    with pytest.raises(UnsupportedModelError, match="division by an activation"):
        CRPEngine(_Tokens(_ElementwiseRatio()).eval(), example_input=x).attribute(x, target=0)


class _RMSNorm(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, t):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Scale(nn.Module):
    """``_RMSNorm`` with its statistic computed outside the graph: a constant per token."""

    def __init__(self, norm: _RMSNorm, scale: torch.Tensor) -> None:
        super().__init__()
        self.norm, self.scale = norm, scale

    def forward(self, t):
        return t * self.scale * self.norm.weight


def test_a_spelled_out_rms_norm_holds_its_statistic_constant():
    """Equal to the same model with the per-token ``rsqrt(mean(x^2))`` frozen as a constant."""
    torch.manual_seed(6)
    x = torch.rand(1, 3, 8, 8)
    model = _Tokens(_RMSNorm()).double().eval()
    with torch.no_grad():
        t = torch.relu(model.embed(x.double()).flatten(2).transpose(1, 2))
        scale = torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)
    frozen = _Tokens(_Scale(model.op, scale))
    frozen.load_state_dict(model.state_dict(), strict=False)
    assert torch.allclose(_heatmap(model, x), _heatmap(frozen, x), rtol=1e-10, atol=1e-14)


class _Squared(nn.Module):
    def forward(self, t):
        return t.pow(2)


def test_a_statistic_op_used_as_a_feature_is_refused_in_one_line():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(UnsupportedModelError, match="statistic") as info:
        CRPEngine(_Tokens(_Squared()).eval(), example_input=x).attribute(x, target=0)
    assert "\n" not in str(info.value)


class _Sequence1d(nn.Module):
    """``Conv1d`` and ``AvgPool1d`` over the token axis, or the same ops as 2-D ones on a height-1 map."""

    def __init__(self, two_d: bool) -> None:
        super().__init__()
        self.two_d = two_d
        self.conv = nn.Conv2d(8, 8, (1, 3), padding=(0, 1)) if two_d else nn.Conv1d(8, 8, 3, padding=1)
        self.pool = nn.AvgPool2d((1, 2), (1, 2)) if two_d else nn.AvgPool1d(2, 2)

    def forward(self, t):
        s = t.transpose(1, 2)
        if self.two_d:
            return self.pool(torch.relu(self.conv(s.unsqueeze(2)))).squeeze(2).transpose(1, 2)
        return self.pool(torch.relu(self.conv(s))).transpose(1, 2)


def test_conv1d_and_avgpool1d_equal_their_2d_rules_on_a_height_one_map():
    torch.manual_seed(7)
    x = torch.rand(1, 3, 8, 8)
    one, two = _Tokens(_Sequence1d(False)), _Tokens(_Sequence1d(True))
    two.load_state_dict({k: v.unsqueeze(2) if k == "op.conv.weight" else v for k, v in one.state_dict().items()})
    assert torch.allclose(_heatmap(one, x), _heatmap(two, x), rtol=1e-10, atol=1e-14)


class _Upsampled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(8, 8, 2, 2)
        self.up = nn.ConvTranspose2d(8, 8, 2, 2)

    def forward(self, t):
        b, n, c = t.shape
        grid = t.transpose(1, 2).reshape(b, c, 2, n // 2)
        return self.up(torch.relu(self.down(grid))).flatten(2).transpose(1, 2)


def test_conv_transpose_rule_equals_the_slow_z_rule():
    """``R_x = x * W^T (R / z)`` with the transposed convolution's Jacobian ``W`` built column by column."""
    from conceptree.attribution.rules import NormPoolRule

    torch.manual_seed(8)
    up = nn.ConvTranspose2d(3, 2, 2, 2).double()
    x = torch.rand(1, 3, 2, 3, dtype=torch.float64)
    rel = torch.randn(1, 2, 4, 6, dtype=torch.float64)

    def fn(t):
        return F.conv_transpose2d(t, up.weight, None, up.stride)

    jac = torch.stack([fn(e.reshape(1, 3, 2, 3)).flatten() for e in torch.eye(18, dtype=torch.float64)], 1)
    z = jac @ x.flatten()
    slow = x.flatten() * (jac.T @ (rel.flatten() / z))
    rule = NormPoolRule(None, fn, x, fn(x), False, 0.0)
    ((_, fast),) = rule.backward(rel)
    assert torch.allclose(fast.flatten(), slow, rtol=1e-10)
    torch.manual_seed(9)
    model = _Tokens(_Upsampled())
    x = torch.rand(1, 3, 8, 8)
    assert float(_heatmap(model, x).sum()) == pytest.approx(_logit(model, x), rel=1e-3)


class _Unfolded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unfold = nn.Unfold(2, stride=1, padding=0)

    def forward(self, t):
        b, n, c = t.shape
        grid = t.transpose(1, 2).reshape(b, c, 4, n // 4)
        return self.unfold(grid).transpose(1, 2)


def test_unfold_sends_each_copys_relevance_back_to_its_pixel():
    torch.manual_seed(10)
    model = _Tokens(_Unfolded(), width=8)
    model.head = nn.Linear(32, 3)
    x = torch.rand(1, 3, 8, 8)
    assert float(_heatmap(model, x).sum()) == pytest.approx(_logit(model, x), rel=1e-4)


class _Heads(nn.Module):
    """Multi-query (one key/value head for all) or grouped-query attention through SDPA, or the same
    with the key/value heads repeated explicitly."""

    def __init__(self, kv_heads: int, repeat: bool) -> None:
        super().__init__()
        self.kv_heads, self.repeat = kv_heads, repeat

    def forward(self, t):
        b, n, c = t.shape
        q = t.reshape(b, n, 4, c // 4).transpose(1, 2)
        kv = t[..., : self.kv_heads * (c // 4)].reshape(b, n, self.kv_heads, c // 4).transpose(1, 2)
        if self.repeat:
            kv = kv.repeat_interleave(4 // self.kv_heads, 1)
            o = F.scaled_dot_product_attention(q, kv, kv)
        elif self.kv_heads == 1:
            o = F.scaled_dot_product_attention(q, kv, kv)  # broadcast heads
        else:
            o = F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return o.transpose(1, 2).reshape(b, n, c)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_broadcast_and_grouped_query_heads_equal_the_explicit_repeat(kv_heads):
    """Only the values receive relevance (CP-LRP); one value head collects its query heads' shares, as the
    tested repeat_interleave rule sums its copies."""
    torch.manual_seed(11)
    x = torch.rand(1, 3, 8, 8)
    implicit, explicit = _Tokens(_Heads(kv_heads, False)), _Tokens(_Heads(kv_heads, True))
    explicit.load_state_dict(implicit.state_dict())
    assert torch.allclose(_heatmap(implicit, x), _heatmap(explicit, x), rtol=1e-9, atol=1e-13)


class _TwoHeads(nn.Module):
    def __init__(self, stacked: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 3)
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)
        self.stacked = stacked

    def forward(self, x):
        f = torch.relu(self.embed(x)).mean((2, 3))
        if self.stacked:  # CrossViT's head: the mean of the branch heads over a new leading dimension
            return torch.mean(torch.stack([self.a(f), self.b(f)], dim=0), dim=0)
        return (self.a(f) + self.b(f)) * 0.5


def test_a_stack_then_mean_over_it_is_the_sum_of_its_pieces():
    torch.manual_seed(12)
    x = torch.rand(1, 3, 8, 8)
    stacked, summed = _TwoHeads(True), _TwoHeads(False)
    summed.load_state_dict(stacked.state_dict())
    assert torch.allclose(_heatmap(stacked, x), _heatmap(summed, x), rtol=1e-12, atol=1e-15)


def test_token_grids_of_overlapping_patches_or_a_resized_input_keep_the_aspect_ratio():
    assert token_grid(197, 224, 224) == (1, 14, 14)  # ViT-B/16: the integer stride first
    assert token_grid(730, 224, 224) == (1, 27, 27)  # PiT: overlapping patches, stride 8 and size 16
    assert token_grid(197, 240, 240) == (1, 14, 14)  # CrossViT's branch on the input resized to 224
    assert token_grid(2 * 3 + 1, 20, 30) == (1, 2, 3)
    with pytest.raises(UnsupportedModelError, match="not a patch grid"):
        token_grid(50, 20, 30)  # neither 20/s x 30/s nor a 2:3 grid after at most 16 prefix tokens


class _SharedConv(nn.Module):
    """CoaT's convolutional position encoding: one module called by two blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 3, padding=1)
        self.cpe = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.mid = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.embed(x))
        y = y + self.cpe(y)
        y = torch.relu(self.mid(y))
        y = y + self.cpe(y)
        return self.head(y.mean((2, 3)))


def test_a_module_called_twice_is_explained_at_each_call_but_is_not_a_layer():
    torch.manual_seed(13)
    x = torch.rand(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="called more than once.*cpe"):
        engine = CRPEngine(_SharedConv().eval(), example_input=x)
    assert [layer.name for layer in engine.layers] == ["embed", "mid"]
    attribution = engine.attribute(x, target=0)
    assert float(attribution.heatmap.sum()) == pytest.approx(float(attribution.logits[0]), rel=1e-4)


class _CachedBias(nn.Module):
    """EfficientFormerV2's attention-bias cache: filled in eval mode by the first trace."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 3)
        self.bias = nn.Parameter(torch.rand(4, 1, 1))
        self.cache: dict[str, torch.Tensor] = {}
        self.head = nn.Linear(4, 2)

    def biases(self):
        if "biases" not in self.cache:
            self.cache["biases"] = self.bias * 1.0
        return self.cache["biases"]

    def forward(self, x):
        y = torch.relu(self.embed(x))
        side = int(y.shape[-1])  # sends the trace to the example-following tracer: a second trace
        return self.head((y * self.biases()).mean((2, 3)) * side / side)


def test_caches_filled_with_proxies_by_one_trace_do_not_leak_into_the_next():
    torch.manual_seed(14)
    x = torch.rand(1, 3, 8, 8)
    model = _CachedBias().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = CRPEngine(model, example_input=x)
    attribution = engine.attribute(x, target=0)
    assert float(attribution.heatmap.sum()) == pytest.approx(float(attribution.logits[0]), rel=1e-4)
    assert np.isfinite(attribution.heatmap.numpy()).all()


class _WindowConv(nn.Module):
    """EfficientViT-MSRA's shape: a conv run on 2 x 2 windows folded into the batch, then unfolded."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.embed(x))
        b, c, h, w = y.shape
        windows = y.view(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(b * 4, c, h // 2, w // 2)
        z = torch.relu(self.inner(windows))
        z = z.view(b, 2, 2, c, h // 2, w // 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return self.head((y + z).mean((2, 3)))


def test_a_module_run_on_windows_folded_into_the_batch_is_explained_but_is_not_a_layer():
    torch.manual_seed(15)
    x = torch.rand(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"windows folded into the batch are not layers .*: inner"):
        engine = CRPEngine(_WindowConv().eval(), example_input=x)
    assert [layer.name for layer in engine.layers] == ["embed"]
    attribution = engine.attribute(x, target=0)
    assert float(attribution.heatmap.sum()) == pytest.approx(float(attribution.logits[0]), rel=1e-4)
    maps = engine.neuron_maps(attribution, batch_size=4, channels={"embed": [0, 1, 2, 3]})
    assert float(maps.map_sums.sum()) == pytest.approx(float(attribution.channel_relevance("embed").sum()), rel=1e-4)
