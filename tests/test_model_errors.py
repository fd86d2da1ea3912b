"""The model's own failures on an input are one-line errors naming the node and the input shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conceptree.attribution import CRPEngine
from conceptree.errors import ConceptreeError, InputError, ModelError


class FixedSize(nn.Module):
    """A classifier whose dense layer only fits 16x16 inputs (a classic wrong-input-size mistake)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class SpaceToDepth(nn.Module):
    """A stem that turns 3 channels into 12 before the first conv (as TResNet's)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(12, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_a_wrong_input_size_is_one_line_naming_the_node_and_shape():
    torch.manual_seed(0)
    engine = CRPEngine(FixedSize().eval())
    engine.attribute(torch.rand(1, 3, 16, 16))  # fits
    with pytest.raises(InputError) as err:
        engine.attribute(torch.rand(1, 3, 20, 20))
    message = str(err.value)
    assert "module 'fc'" in message and "(1, 3, 20, 20)" in message and "RuntimeError" in message
    assert "\n" not in message


def test_a_bare_assertion_of_the_model_gets_a_message_and_our_errors_pass_through():
    from torch import fx

    from conceptree.attribution._forward import _model_error
    from conceptree.errors import UnsupportedModelError

    graph = fx.Graph()
    node = graph.call_function(torch.relu, (graph.placeholder("x"),))
    error = _model_error(node, AssertionError(), torch.zeros(1, 3, 7, 7))
    assert isinstance(error, InputError)
    assert "function 'relu'" in str(error) and "AssertionError: no message" in str(error) and "(1, 3, 7, 7)" in str(error)
    ours = UnsupportedModelError("no rule")
    assert _model_error(node, ours, torch.zeros(1)) is ours


def test_the_channel_check_follows_the_graph_not_the_first_conv():
    torch.manual_seed(0)
    engine = CRPEngine(SpaceToDepth().eval())
    attribution = engine.attribute(torch.rand(1, 3, 8, 8))  # 3 channels are right although the conv reads 12
    assert attribution.input_relevance.shape == (3, 8, 8)
    with pytest.raises(InputError, match="on an input of shape \\(1, 4, 8, 8\\)"):
        engine.attribute(torch.rand(1, 4, 8, 8))  # the model's own reshape fails: reported at its node


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_copying_pads_send_each_cells_relevance_to_the_pixel_it_copies(mode):
    """Slow reference: pad an index image, then add every output cell's relevance to its source."""
    import torch.nn.functional as F

    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(F.pad(x, (1, 2, 2, 1), mode=mode))).mean((2, 3)))

    torch.manual_seed(0)
    engine = CRPEngine(Padded().double().eval())
    x = torch.rand(1, 3, 6, 5, dtype=torch.float64)
    attribution = engine.attribute(x)
    forward = attribution.forward
    pad_node = next(n for n in forward.rules if n.op == "call_function" and n.target is F.pad)
    rel = torch.rand(1, 3, 9, 8, dtype=torch.float64)
    (_, got), = forward.rules[pad_node].backward(rel)
    source = F.pad(torch.arange(30, dtype=torch.float64).reshape(1, 1, 6, 5), (1, 2, 2, 1), mode=mode).long().flatten()
    expected = torch.zeros(3, 30, dtype=torch.float64)
    for cell, src in enumerate(source.tolist()):
        expected[:, src] += rel[0].reshape(3, -1)[:, cell]
    assert torch.allclose(got[0].reshape(3, -1), expected)
    assert abs(float(got.sum()) - float(rel.sum())) < 1e-9  # conserved


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _failing_engine(error: BaseException) -> CRPEngine:
    """An engine whose traced ``conv`` raises ``error`` (the model's own code) after one successful
    pass on a ``(1, 3, 8, 8)`` input (a shape then known to fit)."""
    torch.manual_seed(0)
    engine = CRPEngine(Small().eval())
    calls = []

    def fail_after_the_first_call(module, inputs, out):
        calls.append(1)
        if len(calls) > 1:
            raise error

    engine.graph_module.get_submodule("conv").register_forward_hook(fail_after_the_first_call)
    engine.attribute(torch.rand(1, 3, 8, 8))
    return engine


def test_the_models_own_failure_is_a_model_error_with_the_node_and_its_cause():
    original = ValueError("the model's lookup table is empty")
    engine = _failing_engine(original)
    with pytest.raises(ModelError) as err:
        engine.attribute(torch.rand(1, 3, 12, 12))  # a new shape, but the message is not about sizes
    assert not isinstance(err.value, InputError)
    assert "module 'conv'" in str(err.value) and "lookup table is empty" in str(err.value) and "\n" not in str(err.value)
    assert err.value.__cause__ is original


def test_a_size_message_on_a_shape_that_ran_before_is_the_models_failure_not_the_inputs():
    original = RuntimeError("size mismatch in the model's cached buffer")
    engine = _failing_engine(original)
    with pytest.raises(ModelError, match="size mismatch") as err:
        engine.attribute(torch.rand(1, 3, 8, 8))  # the shape that ran fine before
    assert err.value.__cause__ is original
    # the same message on a shape that never ran is read as the input's size
    engine2 = _failing_engine(RuntimeError("size mismatch in the model's cached buffer"))
    with pytest.raises(InputError, match="check the input size"):
        engine2.attribute(torch.rand(1, 3, 10, 10))


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   MemoryError("cannot allocate")])
def test_out_of_memory_propagates_unchanged(error):
    engine = _failing_engine(error)
    with pytest.raises(type(error)) as err:
        engine.attribute(torch.rand(1, 3, 16, 16))
    assert err.value is error and not isinstance(err.value, ConceptreeError)


def test_model_error_classification_without_a_model():
    from torch import fx

    from conceptree.attribution._forward import _model_error

    graph = fx.Graph()
    node = graph.call_function(torch.relu, (graph.placeholder("x"),))
    x = torch.zeros(1, 3, 7, 7)
    assert isinstance(_model_error(node, AssertionError(), x, ran={(1, 3, 7, 7)}), ModelError)
    assert isinstance(_model_error(node, RuntimeError("mat1 and mat2 shapes cannot be multiplied"), x), InputError)
    assert isinstance(_model_error(node, KeyError("weights"), x), ModelError)
    oom = torch.cuda.OutOfMemoryError("out of memory")
    assert _model_error(node, oom, x) is oom
