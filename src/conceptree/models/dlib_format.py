"""Read dlib's serialised DNN files (``*.dat`` written by ``dlib::serialize(net, out)``) without dlib.

The format is dlib's own (``dlib/serialize.h``, ``dlib/dnn/core.h``, ``dlib/dnn/layers.h``;
facts taken from the dlib sources, code written here):

- integers: one control byte (low nibble = number of bytes that follow, ``0x80`` = negative),
  then the magnitude little-endian; strings: an integer length, then the bytes; ``bool``: the
  character ``'0'`` or ``'1'``; ``float``/``double``: an integer mantissa and an integer
  exponent (value = mantissa · 2^exponent);
- a tensor: version 2, then ``num_samples, k, nr, nc`` as integers, then the values as raw
  little-endian float32; an alias tensor (a view into a layer's ``params``): version 1 and the
  four sizes, no values;
- a network: ``add_loss_layer`` (version 1, the loss's details), then the version integer of each
  nested ``add_layer`` (2), tag and skip layer (1) from the top down; then, from the input up,
  each layer's details followed by ``add_layer``'s bookkeeping (three bools and three tensors).
  Tags and skips write nothing after their subnetwork, so the stream of details is the layers
  in forward order.

Only the layer kinds of dlib's classification and metric ResNets are read (input, ``con``,
``fc``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``); anything else is refused
with its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read_int(self) -> int:
        control = self.data[self.pos]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise InputError(f"not a dlib file: bad integer control byte 0x{control:02x} at offset {self.pos}")
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def read_string(self) -> str:
        n = self.read_int()
        text = self.data[self.pos : self.pos + n].decode("latin-1")
        self.pos += n
        return text

    def read_bool(self) -> bool:
        ch = self.data[self.pos : self.pos + 1]
        if ch not in (b"0", b"1"):
            raise InputError(f"not a dlib file: bad bool at offset {self.pos}")
        self.pos += 1
        return ch == b"1"

    def read_float(self) -> float:
        mantissa = self.read_int()
        exponent = self.read_int()
        return float(mantissa) * 2.0**exponent

    def read_tensor(self) -> np.ndarray:
        version = self.read_int()
        if version != 2:
            raise InputError(f"not a dlib file: tensor version {version} at offset {self.pos}")
        shape = tuple(self.read_int() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).reshape(shape)
        self.pos += 4 * count
        return values.copy()

    def read_alias(self) -> tuple[int, int, int, int]:
        version = self.read_int()
        if version != 1:
            raise InputError(f"not a dlib file: alias tensor version {version} at offset {self.pos}")
        return tuple(self.read_int() for _ in range(4))  # type: ignore[return-value]


@dataclass
class DlibLayer:
    """One layer of a dlib network, in forward order.

    Attributes
    ----------
    kind : str
        ``input``, ``con``, ``fc``, ``affine``, ``relu``, ``max_pool``, ``avg_pool`` or ``add_prev``.
    attrs : dict
        Sizes, strides, paddings (``con``/pools), input means (``input``).
    weights : dict[str, np.ndarray]
        ``con``: ``weight (out, in, kh, kw)``, ``bias (out,)``; ``fc``: ``weight (out, in)`` and
        ``bias`` when it has one; ``affine``: ``gamma (C,)``, ``beta (C,)``.
    """

    kind: str
    attrs: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed dlib network: its loss's name and settings and its layers in forward order."""

    loss: str
    loss_attrs: dict
    layers: list[DlibLayer]


def _bookkeeping(r: _Reader) -> None:
    """``add_layer``'s state after its details: setup/stale/disabled flags, x_grad, output, grads."""
    for _ in range(3):
        r.read_bool()
    for _ in range(3):
        r.read_tensor()


def _split(params: np.ndarray, *shapes: tuple[int, int, int, int]) -> list[np.ndarray]:
    flat = params.reshape(-1)
    out, offset = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[offset : offset + n].reshape(shape))
        offset += n
    return out


def _layer(r: _Reader, name: str) -> DlibLayer:
    if name.startswith("input_rgb_image"):
        means = [r.read_float() for _ in range(3)]
        attrs: dict = {"mean_rgb": means}
        if name == "input_rgb_image_sized":
            attrs["size"] = (r.read_int(), r.read_int())
        return DlibLayer("input", attrs)
    if name in ("con_4", "con_5", "con_6"):
        params = r.read_tensor()
        filters, kh, kw, sy, sx, py, px = (r.read_int() for _ in range(7))
        fshape, bshape = r.read_alias(), r.read_alias()
        for _ in range(4):
            r.read_float()
        use_bias = r.read_bool() if name in ("con_5", "con_6") else True
        if name == "con_6":
            r.read_bool()  # use_relu: a fused relu dlib adds at inference only
        parts = _split(params, fshape, bshape) if use_bias else _split(params, fshape)
        weights = {"weight": parts[0]}
        if use_bias:
            weights["bias"] = parts[1].reshape(-1)
        return DlibLayer("con", {"filters": filters, "kernel": (kh, kw), "stride": (sy, sx), "padding": (py, px)}, weights)
    if name in ("fc_2", "fc_3"):
        outputs, inputs = r.read_int(), r.read_int()
        params = r.read_tensor()
        wshape, bshape = r.read_alias(), r.read_alias()
        bias_mode = r.read_int()  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
        for _ in range(4):
            r.read_float()
        if name == "fc_3":
            r.read_bool()
        parts = _split(params, wshape, bshape) if bias_mode == 0 else [_split(params, wshape)[0]]
        weights = {"weight": parts[0].reshape(inputs, outputs).T.copy()}
        if bias_mode == 0:
            weights["bias"] = parts[1].reshape(-1)
        return DlibLayer("fc", {"outputs": outputs, "inputs": inputs}, weights)
    if name in ("affine_", "affine_2"):
        params = r.read_tensor()
        gshape, bshape = r.read_alias(), r.read_alias()
        mode = r.read_int()  # dlib's layer_mode: 0 CONV_MODE (per channel), 1 FC_MODE (per element)
        if name == "affine_2":
            r.read_bool()
        gamma, beta = _split(params, gshape, bshape)
        if mode != 0:
            raise InputError("dlib affine layer in FC_MODE is not supported (only per-channel affine layers)")
        return DlibLayer("affine", {}, {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1)})
    if name in ("relu_", "relu_2"):
        if name == "relu_2":
            r.read_bool()
        return DlibLayer("relu")
    if name in ("max_pool_", "max_pool_2", "avg_pool_", "avg_pool_2"):
        kh, kw, sy, sx = (r.read_int() for _ in range(4))
        py, px = (r.read_int(), r.read_int()) if name.endswith("_2") else (0, 0)
        kind = "max_pool" if name.startswith("max") else "avg_pool"
        return DlibLayer(kind, {"kernel": (kh, kw), "stride": (sy, sx), "padding": (py, px)})
    if name == "add_prev_":
        return DlibLayer("add_prev")
    raise InputError(f"dlib layer {name!r} is not supported by this reader (it reads dlib's ResNets: con, fc, affine, "
                     "relu, max_pool, avg_pool, add_prev)")


def read_dlib_net(path) -> DlibNet:
    """Parse a dlib DNN file into its layers in forward order (module docstring).

    Parameters
    ----------
    path : str or Path
        A ``.dat`` written by ``dlib::serialize`` (e.g. ``dlib_face_recognition_resnet_model_v1.dat``).

    Returns
    -------
    DlibNet
    """
    with open(path, "rb") as handle:
        data = handle.read()
    r = _Reader(data)
    try:
        if r.read_int() != 1:
            raise InputError(f"{path}: not a dlib network file (no add_loss_layer header)")
        loss = r.read_string()
        loss_attrs: dict = {}
        if loss == "loss_metric_2":
            loss_attrs = {"margin": r.read_float(), "distance_threshold": r.read_float()}
        elif not loss.startswith("loss_"):
            raise InputError(f"{path}: not a dlib network file (found {loss!r} where a loss layer is expected)")
        else:
            raise InputError(f"{path}: dlib loss {loss!r} is not supported by this reader (loss_metric_2 is)")
        bottom = 0
        while r.data[r.pos] == 0x01 and r.data[r.pos + 1] in (1, 2, 3):  # nested add_layer / tag / skip versions
            bottom = r.read_int()
        layers = []
        while r.pos < len(data):
            name = r.read_string()
            layers.append(_layer(r, name))
            if layers[-1].kind == "input":
                continue  # the bottom add_layer holds the input layer, then its own details
            _bookkeeping(r)
            if len(layers) == 2 and bottom == 3:
                r.read_int()  # _sample_expansion_factor of the bottom add_layer (version 3)
    except (IndexError, ValueError) as err:
        raise InputError(f"{path}: truncated or corrupt dlib file ({err})") from None
    return DlibNet(loss, loss_attrs, layers)
