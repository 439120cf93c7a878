"""Networks in the PEtab SciML YAML format, evaluated with autograd.

A PEtab SciML network file describes a PyTorch module: ``layers`` (each a ``layer_id``, a
PyTorch ``layer_type`` and its constructor ``args``) and ``forward``, a torch.fx-like graph
of nodes (``placeholder`` for each input argument, ``call_module`` for a layer,
``call_function`` / ``call_method`` for an activation or a tensor function, ``output``).
:func:`network_from_yaml` turns it into a :class:`PetabNetwork`, a :class:`dynlearn.Network`
whose derivatives come from autograd, usable in a hybrid model (``inputs=`` the sympy
expressions feeding it) or standalone on arrays laid out as PyTorch takes them. Layers and
functions are vectorised numpy (convolutions and pooling gather their windows with one index
array, im2col style, then contract with ``einsum``); in a model, a plain multilayer
perceptron is computed by :class:`dynlearn.MLP`, whose derivatives are in closed form.

Weights
-------
The flat weight vector holds, layer by layer in the order of the file's ``layers`` list,
each layer's parameter arrays in PyTorch's order (``weight`` then ``bias``), each array with
its PyTorch shape flattened in C (row-major) order. :func:`parameter_slices` gives the slice
of every ``"<layer_id>.<array>"``; :func:`read_parameters` / :func:`write_parameters` read and
write the standard's HDF5 layout ``parameters/<net_id>/<layer_id>/<array>``.

Training or evaluation
----------------------
The suite's reference outputs come from modules in their default (training) state, and the
hybrid problems use them the same way; so normalisation layers follow PyTorch's training
semantics where these differ (``BatchNorm`` normalises with the statistics of the batch it
is given, its running statistics are not part of the format). Dropout layers are the
expectation of their random output: the identity for ``Dropout`` / ``Dropout1d-3d``, the
mean of the affine-corrected output for ``AlphaDropout``.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence

import autograd.numpy as anp
import numpy as np
from autograd import make_vjp
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.scipy.special import erf as _erf

from dynlearn.core.neural import MLP, Network
from dynlearn.errors import ParameterError, PetabError
from dynlearn.petab.extra import require

__all__ = [
    "PetabNetwork",
    "SUPPORTED_FUNCTIONS",
    "SUPPORTED_LAYERS",
    "arrays_to_weights",
    "network_from_yaml",
    "parameter_arrays",
    "parameter_slices",
    "read_parameters",
    "write_parameters",
]


# --- small helpers -----------------------------------------------------------------------
def _tuple(value, n: int, what: str) -> tuple[int, ...]:
    """A PyTorch int-or-sequence argument as a tuple of ``n`` ints."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    out = tuple(int(v) for v in value)
    if len(out) == 1 and n > 1:
        out = out * n
    if len(out) != n:
        raise PetabError(f"{what}: expected {n} values, got {list(value)}")
    return out


def _shift(dim: int, nb: int) -> int:
    """A PyTorch dimension of one sample, as an axis of an array with ``nb`` extra leading
    (dynlearn batch) axes: non-negative dims move right, negative ones count from the end."""
    return dim + nb if dim >= 0 else dim


def _collapse(x, nd: int):
    """Reshape ``x`` of shape (..., C, *S) with ``nd`` spatial axes to (M, C, *S); returns
    the array and the leading shape to restore."""
    lead = x.shape[:x.ndim - nd - 1]
    return anp.reshape(x, (-1,) + x.shape[x.ndim - nd - 1:]), lead


def _window_index(sizes: Sequence[int], kernel, stride, dilation):
    """Flat indices (n_out, n_kernel) of every window over a C-ordered block of ``sizes``,
    and the output sizes. Gathering with them (``x[..., idx]``) builds the im2col matrix."""
    nd = len(sizes)
    outs = [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(sizes, kernel, stride,
                                                                       dilation)]
    if any(o < 1 for o in outs):
        raise PetabError(f"window of kernel {list(kernel)} (dilation {list(dilation)}) does "
                         f"not fit the input of spatial size {list(sizes)}")
    strides = np.cumprod((1,) + tuple(sizes[::-1]))[:-1][::-1]
    flat = np.zeros((1,) * (2 * nd), dtype=np.intp)
    for d in range(nd):
        pos = (np.arange(outs[d])[:, None] * stride[d]
               + np.arange(kernel[d])[None, :] * dilation[d]) * strides[d]
        shape = [1] * (2 * nd)
        shape[d], shape[nd + d] = outs[d], kernel[d]
        flat = flat + pos.reshape(shape)
    return flat.reshape(int(np.prod(outs)), int(np.prod(kernel))), tuple(outs)


def _pad(x, pads, mode: str = "zeros", value: float = 0.0):
    """Pad (or crop, for negative amounts) the trailing ``len(pads)`` axes of ``x``;
    ``pads`` holds (before, after) per axis. Modes as PyTorch's ``padding_mode``."""
    nd = len(pads)
    for d, (lo, hi) in enumerate(pads):
        ax = x.ndim - nd + d
        if lo < 0 or hi < 0:   # crop first (transposed convolutions with large padding)
            n = x.shape[ax]
            sl = [slice(None)] * x.ndim
            sl[ax] = slice(max(-lo, 0), n - max(-hi, 0))
            x = x[tuple(sl)]
            lo, hi = max(lo, 0), max(hi, 0)
        if lo == 0 and hi == 0:
            continue
        n = x.shape[ax]
        if mode in ("zeros", "constant"):
            parts = []
            for k in (lo, hi):
                shape = list(x.shape)
                shape[ax] = k
                parts.append(np.full(shape, value))
            x = anp.concatenate([parts[0], x, parts[1]], axis=ax)
            continue
        i = np.arange(-lo, n + hi)
        if mode == "reflect":
            period = 2 * (n - 1)
            i = np.abs((i + period) % period) if period else np.zeros_like(i)
            i = np.where(i >= n, period - i, i)
        elif mode == "replicate":
            i = np.clip(i, 0, n - 1)
        elif mode == "circular":
            i = i % n
        else:
            raise PetabError(f"padding_mode {mode!r} is not supported "
                             "(zeros, reflect, replicate, circular)")
        sl = [slice(None)] * x.ndim
        sl[ax] = i
        x = x[tuple(sl)]
    return x


# --- activations and tensor functions ----------------------------------------------------
def _softplus(x, beta=1.0, threshold=20.0):
    bx = beta * x
    # PyTorch returns x itself above the threshold (and so avoids exp overflow)
    return anp.where(bx > threshold, x, anp.logaddexp(0.0, anp.minimum(bx, threshold)) / beta)


def _elu(x, alpha=1.0):
    return anp.where(x > 0, x, alpha * (anp.exp(anp.minimum(x, 0.0)) - 1.0))


def _celu(x, alpha=1.0):
    return anp.maximum(x, 0.0) + anp.minimum(0.0, alpha * (anp.exp(anp.minimum(x, 0.0) / alpha)
                                                           - 1.0))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _selu(x):
    return _SELU_SCALE * _elu(x, _SELU_ALPHA)


def _sigmoid(x):
    return 0.5 * (1.0 + anp.tanh(0.5 * x))


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + anp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _relu6(x):
    return anp.clip(x, 0.0, 6.0)


def _softmax_axis(x, dim, nb):
    if dim is None:   # PyTorch's legacy implicit choice
        dim = 0 if (x.ndim - nb) in (0, 1, 3) else 1
    return _shift(int(dim), nb)


def _log_softmax(x, dim=None, nb=0):
    ax = _softmax_axis(x, dim, nb)
    m = anp.max(x, axis=ax, keepdims=True)
    z = x - m
    return z - anp.log(anp.sum(anp.exp(z), axis=ax, keepdims=True))


def _softmax(x, dim=None, nb=0):
    return anp.exp(_log_softmax(x, dim, nb))


def _flatten(x, start_dim=0, end_dim=-1, nb=0):
    s = start_dim + nb if start_dim >= 0 else x.ndim + start_dim
    e = end_dim + nb if end_dim >= 0 else x.ndim + end_dim
    if s > e:
        raise PetabError(f"flatten: start_dim {start_dim} is after end_dim {end_dim}")
    return anp.reshape(x, x.shape[:s] + (-1,) + x.shape[e + 1:])


def _cat(tensors, dim=0, nb=0):
    return anp.concatenate(list(tensors), axis=_shift(int(dim), nb))


def _stack(tensors, dim=0, nb=0):
    return anp.stack(list(tensors), axis=_shift(int(dim), nb))


def _axis(dim: int, x, nb: int, extra: int = 0) -> int:
    """A sample dim (negative counts from the end) as an axis of ``x``; ``extra`` widens the
    range for dims of a result with more axes (unsqueeze)."""
    n = x.ndim - nb + extra
    if not -n <= dim < n:
        raise PetabError(f"dim {dim} out of range for a tensor of {x.ndim - nb} dimensions")
    return dim % n + nb


def _sample_axes(dim, x, nb) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(nb, x.ndim))
    dims = [dim] if isinstance(dim, (int, np.integer)) else list(dim)
    return tuple(_axis(int(d), x, nb) for d in dims)


def _sum(x, dim=None, keepdim=False, nb=0):
    return anp.sum(x, axis=_sample_axes(dim, x, nb), keepdims=bool(keepdim))


def _mean(x, dim=None, keepdim=False, nb=0):
    return anp.mean(x, axis=_sample_axes(dim, x, nb), keepdims=bool(keepdim))


def _unsqueeze(x, dim, nb=0):
    return anp.expand_dims(x, _axis(int(dim), x, nb, extra=1))


def _squeeze(x, dim=None, nb=0):
    axes = [a for a in _sample_axes(dim, x, nb) if x.shape[a] == 1]
    return anp.squeeze(x, axis=tuple(axes)) if axes else x


def _transpose(x, dim0, dim1, nb=0):
    return anp.swapaxes(x, _axis(int(dim0), x, nb), _axis(int(dim1), x, nb))


def _shape_args(args) -> list[int]:
    """``f(x, 2, 3)`` or ``f(x, [2, 3])`` -> [2, 3]."""
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = args[0]
    return [int(a) for a in args]


def _reshape(x, *shape, nb=0):
    return anp.reshape(x, x.shape[:nb] + tuple(_shape_args(shape)))


def _permute(x, *dims, nb=0):
    order = [_axis(d, x, nb) for d in _shape_args(dims)]
    return anp.transpose(x, tuple(range(nb)) + tuple(order))


# name -> (function, keyword arguments it takes (besides the tensor), needs nb)
_ELEMENTWISE = {
    "relu": (lambda x: anp.maximum(x, 0.0), ()),
    "relu6": (_relu6, ()),
    "hardtanh": (lambda x, min_val=-1.0, max_val=1.0: anp.clip(x, min_val, max_val),
                 ("min_val", "max_val")),
    "hardswish": (lambda x: x * _relu6(x + 3.0) / 6.0, ()),
    "hardsigmoid": (lambda x: _relu6(x + 3.0) / 6.0, ()),
    "selu": (_selu, ()),
    "leaky_relu": (lambda x, negative_slope=0.01: anp.where(x >= 0, x, negative_slope * x),
                   ("negative_slope",)),
    "gelu": (_gelu, ("approximate",)),
    "tanh": (anp.tanh, ()),
    "sigmoid": (_sigmoid, ()),
    "logsigmoid": (lambda x: -_softplus(-x), ()),
    "log_sigmoid": (lambda x: -_softplus(-x), ()),
    "tanhshrink": (lambda x: x - anp.tanh(x), ()),
    "softsign": (lambda x: x / (1.0 + anp.abs(x)), ()),
    "softplus": (_softplus, ("beta", "threshold")),
    "mish": (lambda x: x * anp.tanh(_softplus(x)), ()),
    "elu": (_elu, ("alpha",)),
    "celu": (_celu, ("alpha",)),
    "silu": (lambda x: x * _sigmoid(x), ()),
    "exp": (anp.exp, ()),
    "log": (anp.log, ()),
    "sqrt": (anp.sqrt, ()),
    "abs": (anp.abs, ()),
    "sin": (anp.sin, ()),
    "cos": (anp.cos, ()),
    "square": (anp.square, ()),
    "neg": (lambda x: -x, ()),
    "identity": (lambda x: x, ()),
}
_DIMWISE = {
    "softmax": (_softmax, ("dim",)),
    "log_softmax": (_log_softmax, ("dim",)),
    "flatten": (_flatten, ("start_dim", "end_dim")),
    "cat": (_cat, ("dim",)),
    "concat": (_cat, ("dim",)),
    "stack": (_stack, ("dim",)),
    "sum": (_sum, ("dim", "keepdim")),
    "mean": (_mean, ("dim", "keepdim")),
    "unsqueeze": (_unsqueeze, ("dim",)),
    "squeeze": (_squeeze, ("dim",)),
    "transpose": (_transpose, ("dim0", "dim1")),
}
# functions taking a shape or an order as trailing arguments: x.view(2, 3), x.permute(1, 0)
_VARIADIC = {"reshape": _reshape, "view": _reshape, "permute": _permute}
_BINARY = {
    "add": anp.add, "sub": anp.subtract, "mul": anp.multiply, "truediv": anp.true_divide,
    "div": anp.true_divide, "pow": anp.power,
}
#: Functions and methods a forward graph may call (``call_function`` / ``call_method``).
SUPPORTED_FUNCTIONS: tuple[str, ...] = tuple(sorted(
    set(_ELEMENTWISE) | set(_DIMWISE) | set(_BINARY) | set(_VARIADIC) | {"dropout"}))
# keyword arguments that change nothing in a functional evaluation
_IGNORED_KWARGS = {"inplace", "_stacklevel", "dtype", "training"}


def _call_function(target: str, args: list, kwargs: dict, nb: int, where: str):
    """Evaluate one ``call_function`` / ``call_method`` node."""
    kwargs = {k: v for k, v in (kwargs or {}).items() if k not in _IGNORED_KWARGS
              or (k == "dtype" and v is not None)}
    if "dtype" in kwargs:
        raise PetabError(f"{where}: '{target}' with dtype={kwargs['dtype']!r} is not supported")
    if target in _ELEMENTWISE:
        fun, names = _ELEMENTWISE[target]
        extra = dict(zip(names, args[1:]))
        extra.update(kwargs)
        _check_kwargs(extra, names, target, where)
        return fun(args[0], **extra)
    if target in _DIMWISE:
        fun, names = _DIMWISE[target]
        extra = dict(zip(names, args[1:]))
        extra.update(kwargs)
        _check_kwargs(extra, names, target, where)
        try:
            return fun(args[0], nb=nb, **extra)
        except PetabError as exc:
            raise PetabError(f"{where}: {target}: {exc}") from exc
    if target in _BINARY:
        if len(args) != 2 or kwargs:
            raise PetabError(f"{where}: '{target}' takes two arguments")
        return _BINARY[target](args[0], args[1])
    if target in _VARIADIC:
        shape = args[1:] or kwargs.pop("shape", None) or kwargs.pop("dims", None) or []
        _check_kwargs(kwargs, (), target, where)
        return _VARIADIC[target](args[0], *shape, nb=nb)
    if target == "dropout":
        return args[0]
    raise PetabError(f"{where}: unsupported function '{target}'; supported: "
                     f"{', '.join(SUPPORTED_FUNCTIONS)}")


def _check_kwargs(given: dict, allowed, target: str, where: str) -> None:
    bad = set(given) - set(allowed)
    if bad:
        raise PetabError(f"{where}: unsupported argument(s) {sorted(bad)} of '{target}'")


# --- layers ------------------------------------------------------------------------------
class _Layer:
    """One layer: its parameter arrays (name, shape) and its evaluation."""

    arrays: list[tuple[str, tuple[int, ...]]]
    n_args = 1

    def __init__(self, layer_id: str, args: dict, where: str):
        self.id = layer_id
        self.where = where
        self.arrays = []

    def init(self, name: str, shape, rng) -> np.ndarray:
        """PyTorch-like default values (uniform in +-1/sqrt(fan_in); norms: 1 and 0)."""
        return np.zeros(shape)

    def __call__(self, p: dict, xs: list, nb: int):  # pragma: no cover - interface
        raise NotImplementedError

    def check_spatial(self, x, nd: int, nb: int) -> None:
        """Refuse an input of a ``nd``-dimensional spatial layer (convolution, pooling) that
        is neither ``(C, *S)`` (unbatched) nor ``(N, C, *S)``, after ``nb`` batch axes."""
        if x.ndim - nb not in (nd + 1, nd + 2):
            raise PetabError(f"{self.where}: expects input of {nd + 1} (unbatched) or "
                             f"{nd + 2} dimensions, got shape {x.shape[nb:]}")


def _arg(args: dict, key: str, default=None, required: bool = False, where: str = ""):
    if key in args and args[key] is not None:
        return args[key]
    if required:
        raise PetabError(f"{where}: missing argument '{key}'")
    return default


class _FanInInit:
    fan_in = 1

    def init(self, name, shape, rng):
        bound = 1.0 / math.sqrt(max(self.fan_in, 1))
        return rng.uniform(-bound, bound, size=shape)


class _Linear(_FanInInit, _Layer):
    def __init__(self, layer_id, args, where):
        super().__init__(layer_id, args, where)
        n_in = int(_arg(args, "in_features", required=True, where=where))
        n_out = int(_arg(args, "out_features", required=True, where=where))
        self.fan_in, self.in_shape = n_in, (n_in,)
        self.arrays = [("weight", (n_out, n_in))]
        if _arg(args, "bias", True):
            self.arrays.append(("bias", (n_out,)))

    def __call__(self, p, xs, nb):
        if xs[0].ndim <= nb or xs[0].shape[-1] != self.fan_in:
            raise PetabError(f"{self.where}: expects {self.fan_in} input features (last "
                             f"dimension), got an input of shape {xs[0].shape[nb:]}")
        y = anp.dot(xs[0], anp.transpose(p["weight"]))
        return y + p["bias"] if "bias" in p else y


class _Bilinear(_FanInInit, _Layer):
    n_args = 2

    def __init__(self, layer_id, args, where):
        super().__init__(layer_id, args, where)
        n1 = int(_arg(args, "in1_features", required=True, where=where))
        n2 = int(_arg(args, "in2_features", required=True, where=where))
        n_out = int(_arg(args, "out_features", required=True, where=where))
        self.fan_in, self.in_shapes = n1, ((n1,), (n2,))
        self.arrays = [("weight", (n_out, n1, n2))]
        if _arg(args, "bias", True):
            self.arrays.append(("bias", (n_out,)))

    def __call__(self, p, xs, nb):
        for x, shape in zip(xs, self.in_shapes):
            if x.ndim <= nb or x.shape[-1] != shape[0]:
                raise PetabError(f"{self.where}: expects inputs of {self.in_shapes[0][0]} and "
                                 f"{self.in_shapes[1][0]} features, got shapes "
                                 f"{xs[0].shape[nb:]} and {xs[1].shape[nb:]}")
        y = anp.einsum("...i,oij,...j->...o", xs[0], p["weight"], xs[1])
        return y + p["bias"] if "bias" in p else y


class _Conv(_FanInInit, _Layer):
    """ConvNd and ConvTransposeNd (any groups, stride, padding, dilation, padding mode)."""

    def __init__(self, layer_id, args, where, nd: int, transposed: bool):
        super().__init__(layer_id, args, where)
        self.nd, self.transposed = nd, transposed
        c_in = int(_arg(args, "in_channels", required=True, where=where))
        c_out = int(_arg(args, "out_channels", required=True, where=where))
        self.groups = int(_arg(args, "groups", 1))
        if c_in % self.groups or c_out % self.groups:
            raise PetabError(f"{where}: channels {c_in}, {c_out} not divisible by groups "
                             f"{self.groups}")
        self.kernel = _tuple(_arg(args, "kernel_size", required=True, where=where), nd, where)
        self.stride = _tuple(_arg(args, "stride", 1), nd, where)
        self.dilation = _tuple(_arg(args, "dilation", 1), nd, where)
        self.mode = _arg(args, "padding_mode", "zeros")
        padding = _arg(args, "padding", 0)
        if isinstance(padding, str):
            if padding == "valid":
                self.pads = [(0, 0)] * nd
            elif padding == "same" and not transposed:
                tot = [d * (k - 1) for k, d in zip(self.kernel, self.dilation)]
                self.pads = [(t // 2, t - t // 2) for t in tot]
            else:
                raise PetabError(f"{where}: padding {padding!r} is not supported")
        else:
            self.pads = [(q, q) for q in _tuple(padding, nd, where)]
        self.output_padding = _tuple(_arg(args, "output_padding", 0), nd, where)
        self.c_in, self.c_out = c_in, c_out
        k = tuple(self.kernel)
        if transposed:
            if self.mode != "zeros":
                raise PetabError(f"{where}: ConvTranspose supports only padding_mode 'zeros'")
            self.arrays = [("weight", (c_in, c_out // self.groups) + k)]
            # PyTorch's fan-in of a transposed convolution is weight.size(1) * prod(kernel)
            self.fan_in = (c_out // self.groups) * int(np.prod(k))
        else:
            self.arrays = [("weight", (c_out, c_in // self.groups) + k)]
            self.fan_in = (c_in // self.groups) * int(np.prod(k))
        if _arg(args, "bias", True):
            self.arrays.append(("bias", (c_out,)))

    def _conv(self, x, W, stride, dilation):
        """x (M, C_in, *S) already padded, W (C_out, C_in/G, *k) -> (M, C_out, *O)."""
        M, C = x.shape[0], x.shape[1]
        G = self.groups
        idx, outs = _window_index(x.shape[2:], W.shape[2:], stride, dilation)
        cols = anp.reshape(x, (M, C, -1))[:, :, idx]                    # (M, C, O, K)
        cols = anp.reshape(cols, (M, G, C // G) + idx.shape)
        Wg = anp.reshape(W, (G, W.shape[0] // G, W.shape[1], -1))       # (G, Co/G, C/G, K)
        y = anp.einsum("mgcpk,gock->mgop", cols, Wg)
        return anp.reshape(y, (M, W.shape[0]) + outs)

    def __call__(self, p, xs, nb):
        nd = self.nd
        x = xs[0]
        self.check_spatial(x, nd, nb)
        if x.shape[x.ndim - nd - 1] != self.c_in:
            raise PetabError(f"{self.where}: expects {self.c_in} input channels, got an "
                             f"input of shape {x.shape[nb:]}")
        x, lead = _collapse(x, nd)
        W = p["weight"]
        if not self.transposed:
            x = _pad(x, self.pads, self.mode)
            y = self._conv(x, W, self.stride, self.dilation)
        else:
            # a transposed convolution is the convolution of the input spread out by the
            # stride (zeros in between), padded by dilation*(k-1)-padding, with the kernel
            # flipped and its channel axes swapped (per group)
            for d, s in enumerate(self.stride):
                if s > 1:
                    ax = 2 + d
                    xm = anp.moveaxis(x, ax, -1)
                    n = xm.shape[-1]
                    z = anp.concatenate([xm[..., None], np.zeros(xm.shape + (s - 1,))], -1)
                    z = anp.reshape(z, xm.shape[:-1] + (n * s,))[..., :(n - 1) * s + 1]
                    x = anp.moveaxis(z, -1, ax)
            pads = [(dl * (k - 1) - lo, dl * (k - 1) - hi + op) for (lo, hi), k, dl, op in
                    zip(self.pads, self.kernel, self.dilation, self.output_padding)]
            x = _pad(x, pads)
            G = self.groups
            Wt = anp.reshape(W, (G, self.c_in // G, self.c_out // G) + self.kernel)
            Wt = anp.reshape(anp.swapaxes(Wt, 1, 2), (self.c_out, self.c_in // G) + self.kernel)
            Wt = Wt[(slice(None), slice(None)) + (slice(None, None, -1),) * nd]
            y = self._conv(x, Wt, (1,) * nd, self.dilation)
        if "bias" in p:
            y = y + anp.reshape(p["bias"], (-1,) + (1,) * nd)
        return anp.reshape(y, lead + y.shape[1:])


class _Pool(_Layer):
    """MaxPoolNd, AvgPoolNd and LPPoolNd."""

    def __init__(self, layer_id, args, where, nd: int, kind: str):
        super().__init__(layer_id, args, where)
        self.nd, self.kind = nd, kind
        self.kernel = _tuple(_arg(args, "kernel_size", required=True, where=where), nd, where)
        self.stride = _tuple(_arg(args, "stride", self.kernel), nd, where)
        self.padding = _tuple(_arg(args, "padding", 0), nd, where)
        self.dilation = _tuple(_arg(args, "dilation", 1), nd, where)
        self.ceil = bool(_arg(args, "ceil_mode", False))
        self.count_include_pad = bool(_arg(args, "count_include_pad", True))
        self.divisor = _arg(args, "divisor_override", None)
        self.norm = float(_arg(args, "norm_type", 2.0))
        if _arg(args, "return_indices", False):
            raise PetabError(f"{where}: return_indices=True is not supported")

    def _windows(self, x, fill):
        """x (M, C, *S) -> (windows (M, C, O, K), output sizes, divisor counts (O,))."""
        sizes = x.shape[2:]
        pads, outs = [], []
        for L, k, s, q, d in zip(sizes, self.kernel, self.stride, self.padding, self.dilation):
            span = L + 2 * q - d * (k - 1) - 1
            o = (-(-span // s) if self.ceil else span // s) + 1
            if self.ceil and (o - 1) * s >= L + q:   # a window must start inside the input
                o -= 1
            extra = max((o - 1) * s + d * (k - 1) + 1 - (L + 2 * q), 0)
            pads.append((q, q + extra))
            outs.append(o)
        xp = _pad(x, pads, "constant", fill)
        idx, _ = _window_index(xp.shape[2:], self.kernel, self.stride, self.dilation)
        cols = anp.reshape(xp, xp.shape[:2] + (-1,))[:, :, idx]
        # what counts towards an average: the padded input (count_include_pad) or the input
        inner = [(0, h - q) if self.count_include_pad else (q, h) for q, h in pads]
        base = np.ones(tuple(L + 2 * q for L, q in zip(sizes, self.padding))
                       if self.count_include_pad else sizes)
        mask = _pad(base, inner, "constant", 0.0)
        counts = mask.reshape(-1)[idx].sum(axis=1)
        return cols, tuple(outs), counts

    def __call__(self, p, xs, nb):
        nd = self.nd
        x = xs[0]
        self.check_spatial(x, nd, nb)
        x, lead = _collapse(x, nd)
        if self.kind == "max":
            cols, outs, _ = self._windows(x, -np.inf)
            y = anp.max(cols, axis=-1)
        elif self.kind == "avg":
            cols, outs, counts = self._windows(x, 0.0)
            div = float(self.divisor) if self.divisor else counts
            y = anp.sum(cols, axis=-1) / div
        else:   # LP pool, as PyTorch: sign(s) * relu(|s|) ** (1/p), s the window sum of x**p
            cols, outs, counts = self._windows(anp.power(x, self.norm), 0.0)
            s = anp.sum(cols, axis=-1) / counts * float(np.prod(self.kernel))
            y = anp.sign(s) * anp.power(anp.maximum(anp.abs(s), 0.0), 1.0 / self.norm)
        y = anp.reshape(y, y.shape[:2] + outs)
        return anp.reshape(y, lead + y.shape[1:])


class _AdaptivePool(_Layer):
    def __init__(self, layer_id, args, where, nd: int, kind: str):
        super().__init__(layer_id, args, where)
        self.nd, self.kind = nd, kind
        size = _arg(args, "output_size", required=True, where=where)
        if isinstance(size, (int, np.integer)) or size is None:
            size = [size] * nd
        self.size = list(size)
        if len(self.size) != nd:
            raise PetabError(f"{where}: output_size needs {nd} values, got {size}")
        if _arg(args, "return_indices", False):
            raise PetabError(f"{where}: return_indices=True is not supported")

    def __call__(self, p, xs, nb):
        x = xs[0]
        nd = self.nd
        self.check_spatial(x, nd, nb)
        # windows are products of per-axis intervals, so the pool is one axis at a time
        for d in range(nd):
            ax = x.ndim - nd + d
            L = x.shape[ax]
            o = L if self.size[d] is None else int(self.size[d])
            starts = [(i * L) // o for i in range(o)]
            ends = [-((-(i + 1) * L) // o) for i in range(o)]
            if self.kind == "avg":
                A = np.zeros((o, L))
                for i, (a, b) in enumerate(zip(starts, ends)):
                    A[i, a:b] = 1.0 / (b - a)
                x = anp.moveaxis(anp.tensordot(x, A, axes=([ax], [1])), -1, ax)
            else:
                sl = [slice(None)] * x.ndim
                parts = []
                for a, b in zip(starts, ends):
                    sl[ax] = slice(a, b)
                    parts.append(anp.max(x[tuple(sl)], axis=ax, keepdims=True))
                x = anp.concatenate(parts, axis=ax)
        return x


class _Norm(_Layer):
    """BatchNormNd (batch statistics), InstanceNormNd and LayerNorm."""

    def __init__(self, layer_id, args, where, nd: int, kind: str):
        super().__init__(layer_id, args, where)
        self.nd, self.kind = nd, kind
        self.eps = float(_arg(args, "eps", 1e-5))
        if kind == "layer":
            shape = _arg(args, "normalized_shape", required=True, where=where)
            self.shape = (int(shape),) if isinstance(shape, (int, np.integer)) \
                else tuple(int(s) for s in shape)
            if _arg(args, "elementwise_affine", True):
                self.arrays = [("weight", self.shape)]
                if _arg(args, "bias", True):
                    self.arrays.append(("bias", self.shape))
        else:
            c = int(_arg(args, "num_features", required=True, where=where))
            self.shape = (c,)
            if _arg(args, "affine", kind == "batch"):
                self.arrays = [("weight", (c,)), ("bias", (c,))]

    def init(self, name, shape, rng):
        return np.ones(shape) if name == "weight" else np.zeros(shape)

    def __call__(self, p, xs, nb):
        x = xs[0]
        r = x.ndim - nb
        if self.kind == "layer":
            k = len(self.shape)
            if tuple(x.shape[x.ndim - k:]) != self.shape:
                raise PetabError(f"{self.where}: input shape {x.shape[nb:]} does not end "
                                 f"with normalized_shape {list(self.shape)}")
            axes = tuple(range(x.ndim - k, x.ndim))
            bshape = self.shape
        elif self.kind == "instance":
            if r not in (self.nd + 1, self.nd + 2):
                raise PetabError(f"{self.where}: expects input of {self.nd + 1} or "
                                 f"{self.nd + 2} dimensions, got shape {x.shape[nb:]}")
            axes = tuple(range(x.ndim - self.nd, x.ndim))
            bshape = self.shape + (1,) * self.nd
        else:
            ok = (2, 3) if self.nd == 1 else (self.nd + 2,)
            if r not in ok:
                raise PetabError(f"{self.where}: expects input of {' or '.join(map(str, ok))} "
                                 f"dimensions, got shape {x.shape[nb:]}")
            axes = (nb,) + tuple(range(nb + 2, x.ndim))
            bshape = self.shape + (1,) * (r - 2)
        if self.kind != "layer" and x.shape[x.ndim - len(bshape)] != self.shape[0]:
            raise PetabError(f"{self.where}: expects {self.shape[0]} channels, got an input "
                             f"of shape {x.shape[nb:]}")
        mean = anp.mean(x, axis=axes, keepdims=True)
        var = anp.mean((x - mean) ** 2, axis=axes, keepdims=True)
        y = (x - mean) / anp.sqrt(var + self.eps)
        if "weight" in p:
            y = y * anp.reshape(p["weight"], bshape)
        if "bias" in p:
            y = y + anp.reshape(p["bias"], bshape)
        return y


class _Flatten(_Layer):
    def __init__(self, layer_id, args, where):
        super().__init__(layer_id, args, where)
        self.start = int(_arg(args, "start_dim", 1))
        self.end = int(_arg(args, "end_dim", -1))

    def __call__(self, p, xs, nb):
        return _flatten(xs[0], self.start, self.end, nb)


class _Dropout(_Layer):
    """The expectation of dropout's output: the identity (inverted dropout keeps the mean)."""

    def __call__(self, p, xs, nb):
        return xs[0]


class _AlphaDropout(_Layer):
    """The expectation of AlphaDropout's output: ``a * ((1-p) x + p * alpha') + b`` with
    PyTorch's affine correction ``a``, ``b``, which keeps zero mean and unit variance; it
    simplifies to ``a (1-p) x``."""

    def __init__(self, layer_id, args, where):
        super().__init__(layer_id, args, where)
        q = float(_arg(args, "p", 0.5))
        alpha_p = -_SELU_ALPHA * _SELU_SCALE
        self.factor = 0.0 if q >= 1.0 else \
            (1.0 - q) * ((1.0 - q) * (1.0 + q * alpha_p ** 2)) ** -0.5

    def __call__(self, p, xs, nb):
        return xs[0] * self.factor


def _factory():
    table = {
        "Linear": _Linear,
        "Bilinear": _Bilinear,
        "Flatten": _Flatten,
        "LayerNorm": lambda i, a, w: _Norm(i, a, w, 0, "layer"),
        "Dropout": _Dropout,
        "AlphaDropout": _AlphaDropout,
    }
    for nd in (1, 2, 3):
        table[f"Conv{nd}d"] = lambda i, a, w, nd=nd: _Conv(i, a, w, nd, False)
        table[f"ConvTranspose{nd}d"] = lambda i, a, w, nd=nd: _Conv(i, a, w, nd, True)
        table[f"MaxPool{nd}d"] = lambda i, a, w, nd=nd: _Pool(i, a, w, nd, "max")
        table[f"AvgPool{nd}d"] = lambda i, a, w, nd=nd: _Pool(i, a, w, nd, "avg")
        table[f"LPPool{nd}d"] = lambda i, a, w, nd=nd: _Pool(i, a, w, nd, "lp")
        table[f"AdaptiveMaxPool{nd}d"] = lambda i, a, w, nd=nd: _AdaptivePool(i, a, w, nd, "max")
        table[f"AdaptiveAvgPool{nd}d"] = lambda i, a, w, nd=nd: _AdaptivePool(i, a, w, nd, "avg")
        table[f"BatchNorm{nd}d"] = lambda i, a, w, nd=nd: _Norm(i, a, w, nd, "batch")
        table[f"InstanceNorm{nd}d"] = lambda i, a, w, nd=nd: _Norm(i, a, w, nd, "instance")
        table[f"Dropout{nd}d"] = _Dropout
    return table


_LAYERS = _factory()
#: Layer types (PyTorch names) a network file may use.
SUPPORTED_LAYERS: tuple[str, ...] = tuple(sorted(_LAYERS))


# --- the graph ---------------------------------------------------------------------------
class _Graph:
    """The compiled forward graph: layers, nodes, the weight layout. Picklable, holds no
    reference to the network (networks are copied with other weights)."""

    def __init__(self, spec: dict, where: str):
        self.where = where
        self.model_id = str(spec.get("nn_model_id", "net"))
        layers = spec.get("layers") or []
        self.layers: dict[str, _Layer] = {}
        for entry in layers:
            lid = str(entry.get("layer_id"))
            ltype = entry.get("layer_type")
            lwhere = f"{where}: layer '{lid}' ({ltype})"
            if lid in self.layers:
                raise PetabError(f"{where}: layer id '{lid}' is defined twice")
            if ltype not in _LAYERS:
                callers = [n.get("name") for n in spec.get("forward") or []
                           if n.get("op") == "call_module" and n.get("target") == lid]
                node = f", called by node '{callers[0]}'" if callers else ""
                raise PetabError(f"{where}: layer '{lid}' has unsupported type '{ltype}'"
                                 f"{node}; supported: {', '.join(SUPPORTED_LAYERS)}")
            self.layers[lid] = _LAYERS[ltype](lid, dict(entry.get("args") or {}), lwhere)
        # the weight layout
        self.slices: dict[str, slice] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        off = 0
        for lid, layer in self.layers.items():
            for name, shape in layer.arrays:
                n = int(np.prod(shape))
                self.slices[f"{lid}.{name}"] = slice(off, off + n)
                self.shapes[f"{lid}.{name}"] = tuple(shape)
                off += n
        self.n_weights = off
        # the nodes
        self.nodes = []
        self.placeholders: list[str] = []
        self.output = None
        names = set()
        for node in spec.get("forward") or []:
            op, name, target = node.get("op"), str(node.get("name")), node.get("target")
            nwhere = f"{where}: node '{name}'"
            if op == "placeholder":
                self.placeholders.append(name)
            elif op == "call_module":
                if target not in self.layers:
                    raise PetabError(f"{nwhere} calls layer '{target}', which is not defined "
                                     "in layers")
            elif op in ("call_function", "call_method"):
                t = str(target).split(".")[-1]   # torch.tanh, F.relu -> tanh, relu
                if t not in SUPPORTED_FUNCTIONS:
                    raise PetabError(f"{nwhere}: unsupported {op} '{target}'; supported: "
                                     f"{', '.join(SUPPORTED_FUNCTIONS)}")
                target = t
            elif op == "output":
                self.output = node.get("args") or []
            else:
                raise PetabError(f"{nwhere}: unsupported op '{op}'")
            # node references are strings in args; keyword values are constants (a string
            # keyword such as gelu's approximate="tanh" may equal a node's name)
            for ref in _refs(node.get("args")):
                if ref not in names:
                    raise PetabError(f"{nwhere} uses '{ref}' before it is defined")
            names.add(name)
            self.nodes.append((op, name, target, node.get("args") or [],
                               dict(node.get("kwargs") or {}), nwhere))
        if not self.placeholders:
            raise PetabError(f"{where}: the forward graph has no placeholder (input)")
        if self.output is None:
            raise PetabError(f"{where}: the forward graph has no output node")
        self.input_shapes = self._infer_input_shapes()

    def _infer_input_shapes(self):
        """Per placeholder, the shape of one sample when a Linear/Bilinear reads it directly
        (networks of vectors); None where it cannot be told from the file."""
        shapes = {}
        for op, _, target, args, _, _ in self.nodes:
            if op != "call_module":
                continue
            layer = self.layers[target]
            for k, a in enumerate(args):
                if isinstance(a, str) and a in self.placeholders and a not in shapes:
                    if isinstance(layer, _Linear):
                        shapes[a] = layer.in_shape
                    elif isinstance(layer, _Bilinear):
                        shapes[a] = layer.in_shapes[k]
        return [shapes.get(p) for p in self.placeholders]

    def mlp_chain(self, input_shapes):
        """``(linear layer ids in call order, activation)`` when the graph is a plain
        multilayer perceptron of vectors that :class:`dynlearn.MLP` computes exactly: an
        optional ``cat`` of all inputs in order, then ``Linear`` (with bias) and one
        activation (tanh, relu or sigmoid) alternating, ending with a ``Linear``; else None."""
        if any(s is None or len(s) != 1 for s in input_shapes):
            return None
        nodes = [n for n in self.nodes if n[0] != "placeholder"]
        prev = self.placeholders[0]
        if len(self.placeholders) > 1 or (nodes and nodes[0][2] in ("cat", "concat")):
            if not nodes or nodes[0][0] != "call_function" or nodes[0][2] not in ("cat",
                                                                                  "concat"):
                return None
            op, name, target, args, kwargs, _ = nodes[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if list(args[0]) != self.placeholders or dim not in (0, -1):
                return None
            prev, nodes = name, nodes[1:]
        linears, act = [], None
        for k, (op, name, target, args, kwargs, _) in enumerate(nodes[:-1]):
            if list(args) != [prev]:
                return None
            if k % 2 == 0:
                layer = self.layers.get(target) if op == "call_module" else None
                if not isinstance(layer, _Linear) or len(layer.arrays) != 2 \
                        or target in linears:
                    return None
                linears.append(target)
            else:
                extra = {key for key, v in kwargs.items() if key != "inplace" or v}
                if op not in ("call_function", "call_method") or extra \
                        or target not in ("tanh", "relu", "sigmoid") \
                        or act not in (None, target):
                    return None
                act = target
            prev = name
        if not nodes or nodes[-1][0] != "output" or len(nodes) % 2 or not linears:
            return None
        out = self.output[0] if len(self.output) == 1 else None
        if isinstance(out, (list, tuple)):
            out = out[0] if len(out) == 1 else None
        if out != prev:
            return None
        return linears, act or "identity"

    def params(self, w) -> dict:
        out = {}
        for lid, layer in self.layers.items():
            out[lid] = {name: anp.reshape(w[self.slices[f"{lid}.{name}"]], shape)
                        for name, shape in layer.arrays}
        return out

    def run(self, w, inputs: Sequence, nb: int = 0) -> list:
        """Evaluate the graph on ``inputs`` (one array per placeholder, each with ``nb``
        extra leading batch axes); returns the list of outputs."""
        if len(inputs) != len(self.placeholders):
            raise PetabError(f"{self.where}: the network takes {len(self.placeholders)} "
                             f"input(s) ({', '.join(self.placeholders)}), got {len(inputs)}")
        params = self.params(w)
        env: dict = {}
        it = iter(inputs)
        for op, name, target, args, kwargs, where in self.nodes:
            if op == "placeholder":
                env[name] = next(it)
                continue
            if op == "output":
                continue
            a = _resolve(args, env)
            kw = kwargs
            if op == "call_module":
                layer = self.layers[target]
                if kw:
                    raise PetabError(f"{where}: keyword arguments to a layer are not "
                                     "supported")
                env[name] = layer(params[target], list(a), nb)
            else:
                env[name] = _call_function(target, list(a), kw, nb, where)
        out = _resolve(self.output, env)
        if len(out) == 1 and isinstance(out[0], (list, tuple)):
            out = out[0]
        return list(out)


def _refs(obj) -> list[str]:
    """Node names referenced in a node's positional args (strings, in nested lists)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [r for o in obj for r in _refs(o)]
    return []


def _resolve(obj, env):
    """Positional args with node names replaced by the nodes' values."""
    if isinstance(obj, str):
        return env[obj]
    if isinstance(obj, (list, tuple)):
        return [_resolve(o, env) for o in obj]
    return obj


class _ModelFunction:
    """``fun(w, v)`` for a hybrid model: ``v`` of shape (..., n_inputs) is split into the
    placeholders' samples, the outputs are flattened and concatenated to (..., n_outputs)."""

    def __init__(self, graph: _Graph, input_shapes):
        self.graph = graph
        self.input_shapes = [tuple(s) for s in input_shapes]
        self.sizes = [int(np.prod(s)) for s in self.input_shapes]

    def __call__(self, w, v):
        batch = v.shape[:-1]
        nb = len(batch)
        args, off = [], 0
        for shape, n in zip(self.input_shapes, self.sizes):
            args.append(anp.reshape(v[..., off:off + n], batch + shape))
            off += n
        outs = self.graph.run(w, args, nb)
        return anp.concatenate([anp.reshape(o, batch + (-1,)) for o in outs], axis=-1)


class PetabNetwork(Network):
    """A network read from a PEtab SciML YAML file (see :func:`network_from_yaml`).

    Attributes
    ----------
    model_id : str
        The file's ``nn_model_id``.
    layer_ids : list of str
        The layers, in the file's order (the order of the weights).
    input_shapes : list of tuple or None
        Per input argument (placeholder), the shape of one sample, when known.
    output_shapes : list of tuple or None
        Per output, its shape for one sample (known when the input shapes are).
    source : str
        The file it was read from (``"<dict>"`` for a parsed dictionary).

    Notes
    -----
    Build it with :func:`network_from_yaml` (same arguments; ``spec`` is the parsed file).
    Standalone (no ``inputs``), :meth:`forward` takes PyTorch-shaped arrays. In a model, it is
    a :class:`dynlearn.Network` of the flattened inputs; a plain MLP chain is then computed by
    :class:`dynlearn.MLP` in closed form (:attr:`closed_form`), any other graph through
    autograd, batched over rows (one trace per call, one backward pass per output).
    """

    def __init__(self, spec: dict, name: str | None = None, inputs=None, input_shapes=None,
                 weights=None, seed: int | None = 0, source: str = "<dict>",
                 closed_form: bool = True):
        graph = _Graph(spec, source)
        self.graph = graph
        self.source = source
        self.model_id = graph.model_id
        self.layer_ids = list(graph.layers)
        name = name if name is not None else graph.model_id
        if input_shapes is not None:
            shapes = [tuple(int(n) for n in s) for s in input_shapes]
            if len(shapes) != len(graph.placeholders):
                raise PetabError(f"{source}: {len(graph.placeholders)} input argument(s), "
                                 f"got {len(shapes)} input_shapes")
        else:
            shapes = list(graph.input_shapes)
            if inputs is not None and len(shapes) == 1 and shapes[0] is None:
                n = 1 if isinstance(inputs, str) or not isinstance(inputs, Sequence) \
                    else len(inputs)
                shapes = [(n,)]
        self.input_shapes = None if any(s is None for s in shapes) else shapes
        if weights is None:
            rng = np.random.default_rng(seed)
            parts = [layer.init(aname, shape, rng).ravel()
                     for layer in graph.layers.values() for aname, shape in layer.arrays]
            weights = np.concatenate(parts) if parts else np.zeros(0)
        w = np.asarray(weights, dtype=float).ravel().copy()
        if w.size != graph.n_weights:
            raise ParameterError(f"network '{name}' ({source}) has {graph.n_weights} weights; "
                                 f"got {w.size}")
        self.output_shapes = None
        probe_error = None
        if self.input_shapes is not None:
            # one sample through the graph tells the output shapes; a graph that cannot take
            # a single sample (BatchNorm needs a batch) is still usable standalone
            try:
                probe = graph.run(w, [np.zeros(s) for s in self.input_shapes], 0)
                self.output_shapes = [tuple(np.shape(o)) for o in probe]
            except (PetabError, ValueError) as exc:
                probe_error = exc
                if inputs is None:
                    self.input_shapes = None
        if inputs is None:
            # standalone: no sympy inputs, forward(w, *arrays) takes PyTorch-shaped arrays
            if not isinstance(name, str) or not name.isidentifier():
                raise PetabError(f"{source}: network name must be an identifier, got {name!r}")
            self.name = name
            self.uid = uuid.uuid4().hex
            self.inputs = ()
            self.n_inputs = (sum(int(np.prod(s)) for s in self.input_shapes)
                             if self.input_shapes is not None else 0)
            self.n_outputs = (sum(int(np.prod(s)) for s in self.output_shapes)
                              if self.output_shapes is not None else 0)
            self.outputs = ()
            self.fun = _ModelFunction(graph, self.input_shapes) \
                if self.input_shapes is not None else None
            self._mlp, self._perm = None, None
            self._weights = w
            self.n_weights = w.size
            return
        if self.input_shapes is None:
            raise PetabError(
                f"{source}: the sample shape of input(s) {graph.placeholders} cannot be told "
                "from the file (no Linear reads them directly); pass input_shapes=")
        if probe_error is not None:
            raise PetabError(f"{source}: the network cannot be evaluated on one sample of "
                             f"shape(s) {self.input_shapes}: {probe_error}") from probe_error
        n_in = sum(int(np.prod(s)) for s in self.input_shapes)
        n_given = 1 if isinstance(inputs, str) or not isinstance(inputs, Sequence) \
            else len(inputs)
        if n_given != n_in:
            raise PetabError(f"{source}: the network takes {n_in} input value(s) "
                             f"(shapes {self.input_shapes}); got {n_given} inputs")
        n_out = sum(int(np.prod(s)) for s in self.output_shapes)
        super().__init__(name, inputs, n_out, _ModelFunction(graph, self.input_shapes), w)
        self._mlp, self._perm = None, None
        chain = graph.mlp_chain(self.input_shapes) if closed_form else None
        if chain is not None:
            # the same computation as a dl.MLP (closed-form derivatives, ~50-100x faster than
            # autograd in the solver): its weights are ours permuted, W transposed per layer
            linears, act = chain
            perm = []
            for lid in linears:
                sw, sb = graph.slices[f"{lid}.weight"], graph.slices[f"{lid}.bias"]
                n_out_l, n_in_l = graph.shapes[f"{lid}.weight"]
                perm.append(np.arange(sw.start, sw.stop).reshape(n_out_l, n_in_l).T.ravel())
                perm.append(np.arange(sb.start, sb.stop))
            self._perm = np.concatenate(perm)
            hidden = [graph.shapes[f"{lid}.bias"][0] for lid in linears[:-1]]
            self._mlp = MLP(name, self.inputs, n_out, hidden=hidden, activation=act,
                            weights=w[self._perm])

    @property
    def standalone(self) -> bool:
        """True when the network has no sympy inputs (built with ``inputs=None``)."""
        return not self.inputs

    def evaluate(self, w, *arrays):
        """The network on arrays laid out as PyTorch takes them (as stored in the standard's
        input HDF5 files: ``(C, H, W)``, ``(N, C, H, W)``, a vector, ...).

        Parameters
        ----------
        w : array_like, shape (n_weights,)
        *arrays : array_like
            One array per input argument of the forward graph.

        Returns
        -------
        ndarray or tuple of ndarray
            The output (a tuple when the graph returns several).
        """
        args = [a if isinstance(a, ArrayBox) else np.asarray(a, dtype=float) for a in arrays]
        outs = self.graph.run(w, args, 0)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def forward(self, w, *v):
        """With sympy inputs: ``N(v; w)`` of shape (..., n_outputs) for ``v`` of shape
        (..., n_inputs), batched over leading axes. Standalone (``inputs=None``): the same
        as :meth:`evaluate`, on PyTorch-shaped arrays."""
        if self.standalone:
            return self.evaluate(w, *v)
        if len(v) != 1:
            raise PetabError(f"network '{self.name}' in a model takes one input array of "
                             f"shape (..., {self.n_inputs})")
        if self._mlp is not None and not isinstance(w, ArrayBox):   # not under autograd
            return self._mlp.forward(np.asarray(w, float)[self._perm], np.asarray(v[0], float))
        return super().forward(w, v[0])

    @property
    def closed_form(self) -> bool:
        """True when the network is computed as a :class:`dynlearn.MLP` with closed-form
        derivatives (a plain MLP chain in a model), False when autograd differentiates it."""
        return self._mlp is not None

    def _to_petab(self, a):
        """Columns in dl.MLP's weight order (last axis) -> columns in this network's."""
        out = np.zeros(a.shape[:-1] + (self.n_weights,))
        out[..., self._perm] = a
        return out

    def point_function(self, w):
        if self._mlp is not None:
            return self._mlp.point_function(np.asarray(w, dtype=float)[self._perm])
        return super().point_function(w)

    def forward_and_input_jacobian(self, w, v):
        """The outputs and dN/dv, shapes (..., n_outputs) and (..., n_outputs, n_inputs)."""
        v = np.asarray(v, dtype=float)
        if self._mlp is not None:
            return self._mlp.forward_and_input_jacobian(np.asarray(w, float)[self._perm], v)
        flat = v.reshape(-1, self.n_inputs)
        # rows are evaluated independently, so the vector-Jacobian product with a cotangent
        # selecting output o in every row gives each row's gradient of output o: n_outputs
        # backward passes through one trace, whatever the batch size
        vjp, z = make_vjp(lambda V: self.fun(w, V))(flat)
        J = np.empty((flat.shape[0], self.n_outputs, self.n_inputs))
        for o in range(self.n_outputs):
            cot = np.zeros((flat.shape[0], self.n_outputs))
            cot[:, o] = 1.0
            J[:, o, :] = vjp(cot)
        batch = v.shape[:-1]
        return (np.asarray(z).reshape(batch + (self.n_outputs,)),
                J.reshape(batch + (self.n_outputs, self.n_inputs)))

    def input_jacobian(self, w, v):
        return self.forward_and_input_jacobian(w, v)[1]

    def weight_jacobian(self, w, v):
        v = np.asarray(v, dtype=float)
        if self._mlp is not None:
            return self._to_petab(
                self._mlp.weight_jacobian(np.asarray(w, float)[self._perm], v))
        flat = v.reshape(-1, self.n_inputs)
        # one trace, one backward pass per (row, output)
        vjp, _ = make_vjp(lambda ww: self.fun(ww, flat))(np.asarray(w, dtype=float))
        m = flat.shape[0]
        J = np.empty((m, self.n_outputs, self.n_weights))
        for r in range(m):
            for o in range(self.n_outputs):
                cot = np.zeros((m, self.n_outputs))
                cot[r, o] = 1.0
                J[r, o] = vjp(cot)
        return J.reshape(v.shape[:-1] + (self.n_outputs, self.n_weights))

    def weight_vjp(self, w, v, cot):
        if self._mlp is not None:
            return self._to_petab(self._mlp.weight_vjp(np.asarray(w, float)[self._perm],
                                                       np.asarray(v, float), cot))
        return super().weight_vjp(w, v, cot)

    def weight_names(self) -> list[str]:
        names = []
        for key, shape in self.graph.shapes.items():
            for idx in np.ndindex(*shape):
                names.append(f"{self.name}.{key}[{','.join(map(str, idx))}]")
        return names

    def __repr__(self) -> str:
        return (f"PetabNetwork({self.name!r}, layers={self.layer_ids}, "
                f"n_inputs={self.n_inputs}, n_outputs={self.n_outputs}, "
                f"n_weights={self.n_weights})")


# --- public functions --------------------------------------------------------------------
def network_from_yaml(source, name: str | None = None, inputs=None, input_shapes=None,
                      weights=None, seed: int | None = 0,
                      closed_form: bool = True) -> PetabNetwork:
    """Read a network in the PEtab SciML YAML format.

    Parameters
    ----------
    source : str, os.PathLike or dict
        The YAML file, or its already parsed content.
    name : str, optional
        The network's name in a model (outputs print ``name[i]``); default the file's
        ``nn_model_id``.
    inputs : sequence of sympy expressions, optional
        What feeds the network inside a hybrid model, one expression per input value (all
        input arguments flattened in C order and concatenated). None: a standalone network
        whose :meth:`PetabNetwork.forward` takes PyTorch-shaped arrays.
    input_shapes : sequence of tuple of int, optional
        The shape of one sample of each input argument. Needed in a model when the file does
        not tell it (an input not read directly by a Linear layer); with one input argument
        and ``inputs`` given, it defaults to ``(len(inputs),)``.
    weights : array_like, optional
        Initial flat weights (the order of :func:`parameter_slices`); default PyTorch-like
        random values (uniform in +-1/sqrt(fan_in), norm layers 1 and 0) from ``seed``.
    seed : int or None
    closed_form : bool
        In a model, compute a plain multilayer perceptron (Linear layers with bias and one
        activation, tanh, relu or sigmoid, alternating) with :class:`dynlearn.MLP`'s
        closed-form derivatives (default); False: autograd for every network.

    Returns
    -------
    PetabNetwork

    Raises
    ------
    PetabError
        An unsupported layer type, function or op (named, with its node and file), or a
        malformed graph.
    """
    if isinstance(source, dict):
        spec, where = source, "<dict>"
    else:
        yaml = require("yaml", "reading PEtab SciML networks")
        where = os.fspath(source)
        try:
            with open(where, encoding="utf-8") as fh:
                spec = yaml.safe_load(fh)
        except OSError as exc:
            raise PetabError(f"cannot read network file {where}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise PetabError(f"network file {where} is not valid YAML: {exc}") from exc
    if not isinstance(spec, dict) or "forward" not in spec or "layers" not in spec:
        raise PetabError(f"{where}: not a PEtab SciML network (needs 'layers' and 'forward')")
    return PetabNetwork(spec, name=name, inputs=inputs, input_shapes=input_shapes,
                        weights=weights, seed=seed, source=where, closed_form=closed_form)


def parameter_slices(network: PetabNetwork) -> dict[str, slice]:
    """The slice of the flat weight vector holding each parameter array.

    Parameters
    ----------
    network : PetabNetwork

    Returns
    -------
    dict of str to slice
        Keys ``"<layer_id>.<array>"`` (e.g. ``"layer1.weight"``), in weight order: layers as
        in the file, arrays in PyTorch's order; each array is stored flattened in C order
        with its PyTorch shape (:func:`parameter_arrays`). The slices cover the vector once.
    """
    return dict(network.graph.slices)


def parameter_arrays(network: PetabNetwork, weights=None) -> dict[str, dict[str, np.ndarray]]:
    """The flat weights as arrays of their PyTorch shapes.

    Parameters
    ----------
    network : PetabNetwork
    weights : array_like, shape (n_weights,), optional
        Default the network's own.

    Returns
    -------
    dict
        ``{layer_id: {array_name: ndarray}}`` (copies); layers without parameters are absent.
    """
    w = network.check_weights(network.weights if weights is None else weights)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, sl in network.graph.slices.items():
        lid, name = key.rsplit(".", 1)
        out.setdefault(lid, {})[name] = w[sl].reshape(network.graph.shapes[key]).copy()
    return out


def arrays_to_weights(network: PetabNetwork, arrays: dict, weights=None,
                      strict: bool = True) -> np.ndarray:
    """The inverse of :func:`parameter_arrays`: a flat weight vector from
    ``{layer_id: {array_name: array}}``.

    Parameters
    ----------
    network : PetabNetwork
    arrays : dict
    weights : array_like, optional
        Values for arrays that ``arrays`` lacks (default the network's weights).
    strict : bool
        Require every parameter array of the network (default); unknown layers or arrays
        are an error either way.
    """
    w = network.check_weights(network.weights if weights is None else weights).copy()
    seen = set()
    for lid, group in arrays.items():
        for name, value in group.items():
            key = f"{lid}.{name}"
            if key not in network.graph.slices:
                raise PetabError(f"network '{network.name}' has no parameter array '{key}'; "
                                 f"it has {', '.join(network.graph.slices) or 'none'}")
            value = np.asarray(value, dtype=float)
            shape = network.graph.shapes[key]
            if value.shape != shape:
                raise PetabError(f"network '{network.name}': parameter '{key}' has shape "
                                 f"{value.shape}; expected {shape} (PyTorch layout)")
            w[network.graph.slices[key]] = value.ravel()
            seen.add(key)
    missing = [k for k in network.graph.slices if k not in seen]
    if strict and missing:
        raise PetabError(f"network '{network.name}': no values for {', '.join(missing)}")
    return w


def read_parameters(path, network: PetabNetwork, net_id: str | None = None,
                    strict: bool = True, weights=None) -> np.ndarray:
    """Flat weights from a PEtab SciML parameter file (HDF5).

    The file holds ``parameters/<net_id>/<layer_id>/<array>`` datasets in PyTorch's layout.

    Parameters
    ----------
    path : str or os.PathLike
    network : PetabNetwork
    net_id : str, optional
        The group to read; default the network's name, else its ``nn_model_id``, else the
        file's only network.
    strict : bool
        Require every parameter array (default). With False, arrays absent from the file
        keep their values from ``weights`` (default the network's weights): a file may hold
        only some layers.
    weights : array_like, optional

    Returns
    -------
    ndarray, shape (n_weights,)
    """
    h5py = require("h5py", "PEtab SciML network parameters")
    where = os.fspath(path)
    try:
        fh = h5py.File(where, "r")
    except OSError as exc:
        raise PetabError(f"cannot read parameter file {where}: {exc}") from exc
    with fh:
        meta = fh.get("metadata")
        if meta is not None and "pytorch_format" in meta and not bool(meta["pytorch_format"][()]):
            raise PetabError(f"{where}: metadata/pytorch_format is false; only arrays in "
                             "PyTorch's layout are supported")
        if "parameters" not in fh:
            raise PetabError(f"{where}: no 'parameters' group")
        groups = fh["parameters"]
        candidates = [net_id] if net_id is not None else [network.name, network.model_id]
        gid = next((c for c in candidates if c in groups), None)
        if gid is None and net_id is None and len(groups) == 1:
            gid = next(iter(groups))
        if gid is None:
            raise PetabError(f"{where}: no parameters for network "
                             f"{' or '.join(map(repr, dict.fromkeys(candidates)))}; "
                             f"the file has {', '.join(groups) or 'none'}")
        arrays = {lid: {name: np.asarray(ds[()], dtype=float) for name, ds in grp.items()}
                  for lid, grp in groups[gid].items()}
    try:
        return arrays_to_weights(network, arrays, weights=weights, strict=strict)
    except PetabError as exc:
        raise PetabError(f"{where}: {exc}") from exc


def write_parameters(path, network: PetabNetwork, weights=None, net_id: str | None = None,
                     dtype=np.float64) -> None:
    """Write flat weights as a PEtab SciML parameter file (HDF5, PyTorch layout,
    ``metadata/pytorch_format`` true).

    Parameters
    ----------
    path : str or os.PathLike
    network : PetabNetwork
    weights : array_like, optional
        Default the network's weights.
    net_id : str, optional
        The network group's name (default the network's name).
    dtype : numpy dtype
        Of the datasets (default float64, so that a round trip is exact).
    """
    h5py = require("h5py", "PEtab SciML network parameters")
    arrays = parameter_arrays(network, weights)
    with h5py.File(os.fspath(path), "w") as fh:
        fh.create_group("metadata").create_dataset("pytorch_format", data=True)
        grp = fh.create_group("parameters").create_group(net_id or network.name)
        for lid in network.layer_ids:
            if lid not in arrays:
                continue
            lg = grp.create_group(lid)
            for name, value in arrays[lid].items():
                lg.create_dataset(name, data=value.astype(dtype))

