"""Process settings and precision: the allocator setting applies (glibc) in a fresh process and
changes no result; a bfloat16 engine conserves and agrees with float32 to its precision."""

from __future__ import annotations

import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from conceptree import CRPEngine, InputError

from . import helpers


def test_tune_allocator_applies_on_glibc_and_is_a_no_op_elsewhere():
    code = "from conceptree.runtime import tune_allocator; print(tune_allocator())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert proc.returncode == 0 and proc.stdout.strip() == str(expected), proc.stderr


def test_maps_are_equal_with_the_tuned_allocator(tmp_path):
    code = (
        "import sys, numpy as np, torch, torchvision\n"
        "if sys.argv[1] == 'tuned':\n"
        "    from conceptree.runtime import tune_allocator; tune_allocator()\n"
        "from conceptree import CRPEngine\n"
        "torch.manual_seed(0); m = torchvision.models.resnet18().eval(); x = torch.randn(1, 3, 64, 64)\n"
        "e = CRPEngine(m); a = e.attribute(x)\n"
        "np.save(sys.argv[2], e.neuron_maps(a, channels={'layer3.0.conv1': range(16)}).maps)\n"
    )
    for mode in ("plain", "tuned"):
        subprocess.run([sys.executable, "-c", code, mode, str(tmp_path / f"{mode}.npy")], check=True, timeout=300)
    assert np.array_equal(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "tuned.npy"))


def test_bfloat16_engine_conserves_and_agrees_with_float32():
    model = helpers.torchvision_model("resnet18")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fp32, bf16 = CRPEngine(model), CRPEngine(model, dtype=torch.bfloat16)
    a32, a16 = fp32.attribute(x), bf16.attribute(x)
    assert a16.input_relevance.dtype == torch.bfloat16 and a16.target == a32.target
    channels = {"layer2.0.conv1": range(16), "layer4.1.conv2": range(16)}
    m32, m16 = fp32.neuron_maps(a32, channels=channels), bf16.neuron_maps(a16, channels=channels)
    scale = np.abs(m16.relevance).max()
    assert np.abs(m16.map_sums - m16.relevance).max() <= 3e-2 * scale  # conservation to bf16 precision
    a, b = m32.maps.reshape(len(m32), -1), m16.maps.reshape(len(m16), -1)
    live = np.linalg.norm(a, axis=1) > 0
    cos = (a * b).sum(1)[live] / np.linalg.norm(a, axis=1)[live] / np.linalg.norm(b, axis=1)[live]
    assert np.median(cos) > 0.99 and cos.min() > 0.8
    with pytest.raises(InputError, match="floating torch.dtype"):
        CRPEngine(model, dtype=torch.int8)
