"""Neural-network terms for hybrid models.

A network is a function ``z = N(v; w)`` from inputs ``v`` (sympy expressions of states,
time, inputs and parameters) to outputs ``z``, with flat weights ``w``. Its outputs appear in
right-hand sides as sympy symbols (``nn[0]``, ``nn[1]``, ...), so the physics around them
stays symbolic.

Two kinds are provided:

* :class:`MLP`: a multilayer perceptron with closed-form derivatives (input Jacobian,
  weight Jacobian, vector-Jacobian products), all batched with numpy. No autograd trace is
  built in the solver's hot path: a trace costs ~0.5-1 ms per call here, the closed forms
  ~10-20 us.
* :class:`Network`: any function ``fun(w, v)`` written with ``autograd.numpy``; its
  derivatives come from autograd. Slower per call, but any architecture works.

Both share the interface of :class:`BaseNetwork` that the rest of dynlearn relies on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import numpy as np
import sympy as sp

from dynlearn.errors import ModelError, ModelTypeError, ParameterError

__all__ = ["BaseNetwork", "MLP", "Network", "NetworkOutput", "ACTIVATIONS"]

class NetworkOutput(sp.Symbol):
    """The sympy symbol standing for output ``index`` of ``network`` (printed ``nn[0]``).

    Two networks may not share a name within one model; the symbol keeps a reference to its
    network so that a model can find its networks from its equations alone.
    """

    network: BaseNetwork
    index: int

    def __new__(cls, network: BaseNetwork, index: int):
        # __xnew__ bypasses sympy's symbol cache: the network reference must not be shared
        # between two networks that happen to have the same name.
        obj = sp.Symbol.__xnew__(cls, f"{network.name}[{index}]")
        obj.network = network
        obj.index = index
        return obj

    def _hashable_content(self):
        return (self.name, self.network.uid)

    def __reduce__(self):
        return (NetworkOutput, (self.network, self.index))

    def __getnewargs_ex__(self):
        return ((self.network, self.index), {})


# --- activations: (f, f') with f' expressed through z and a = f(z) to reuse work -----------
def _tanh(z):
    return np.tanh(z)


def _dtanh(z, a):
    return 1.0 - a * a


def _rbf(z):
    return np.exp(-z * z)


def _drbf(z, a):
    return -2.0 * z * a


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _dsigmoid(z, a):
    return a * (1.0 - a)


def _softplus(z):
    return np.logaddexp(0.0, z)


def _dsoftplus(z, a):
    return _sigmoid(z)


def _relu(z):
    return np.maximum(z, 0.0)


def _drelu(z, a):
    return (z > 0).astype(float)


def _swish(z):
    return z * _sigmoid(z)


def _dswish(z, a):
    s = _sigmoid(z)
    return s + z * s * (1.0 - s)


def _identity(z):
    return z


def _didentity(z, a):
    return np.ones_like(z)


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (_tanh, _dtanh),
    "rbf": (_rbf, _drbf),
    "sigmoid": (_sigmoid, _dsigmoid),
    "softplus": (_softplus, _dsoftplus),
    "relu": (_relu, _drelu),
    "swish": (_swish, _dswish),
    "identity": (_identity, _didentity),
}


def _as_input_exprs(name: str, inputs) -> tuple[sp.Expr, ...]:
    if isinstance(inputs, (sp.Basic, str)) or not isinstance(inputs, Sequence):
        inputs = [inputs]
    out = []
    for i, v in enumerate(inputs):
        try:
            e = sp.sympify(v, strict=True) if not isinstance(v, sp.Basic) else v
        except (sp.SympifyError, TypeError) as exc:
            raise ModelTypeError(
                f"network '{name}': input {i} ({v!r}) is not a sympy expression; pass symbols "
                "or expressions of the model's states, time and inputs") from exc
        if any(isinstance(s, NetworkOutput) for s in e.free_symbols):
            raise ModelError(f"network '{name}': input {i} ({e}) uses another network's output; "
                             "networks cannot be nested through their inputs")
        out.append(e)
    if not out:
        raise ModelError(f"network '{name}' needs at least one input")
    return tuple(out)


class BaseNetwork:
    """Interface shared by all networks.

    Attributes
    ----------
    name : str
        Used to print outputs (``name[i]``) and to name weights in ``theta_names``.
    inputs : tuple of sympy.Expr
        The network's inputs as expressions of the model's symbols.
    n_inputs, n_outputs, n_weights : int
    weights : ndarray, shape (n_weights,)
        The network's weights (a copy is returned). Networks are immutable: a fitted
        model's networks are copies carrying the fitted weights (:meth:`with_weights`),
        while the networks it started from keep their initial ones.
    outputs : tuple of NetworkOutput
        The symbols to use in right-hand sides; ``net[i]`` is ``net.outputs[i]``.
    """

    name: str
    inputs: tuple
    n_outputs: int
    n_weights: int

    def _init_common(self, name: str, inputs, outputs: int) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ModelError(f"network name must be a Python identifier such as 'nn', got {name!r}")
        if not isinstance(outputs, (int, np.integer)) or outputs < 1:
            raise ModelError(f"network '{name}': outputs must be a positive integer, "
                             f"got {outputs!r}")
        self.name = name
        self.uid = uuid.uuid4().hex  # identity that survives pickling (dask workers)
        self.inputs = _as_input_exprs(name, inputs)
        self.n_inputs = len(self.inputs)
        self.n_outputs = int(outputs)
        self.outputs = tuple(NetworkOutput(self, i) for i in range(self.n_outputs))

    # sympy-facing -------------------------------------------------------------------------
    def __getitem__(self, i: int) -> NetworkOutput:
        if not isinstance(i, (int, np.integer)):
            raise ModelTypeError(f"network '{self.name}' is indexed by an integer output "
                                 f"index, got {i!r}")
        if not -self.n_outputs <= i < self.n_outputs:
            raise ModelError(
                f"network '{self.name}' has {self.n_outputs} outputs "
                f"(indices 0..{self.n_outputs - 1}); "
                f"index {i} is out of range. Increase outputs= or use a valid index.")
        return self.outputs[i]

    def __len__(self) -> int:
        return self.n_outputs

    def __iter__(self):
        return iter(self.outputs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, inputs={list(self.inputs)}, "
                f"outputs={self.n_outputs}, n_weights={self.n_weights})")

    def __getstate__(self):
        # outputs refer back to the network: rebuild them on unpickling instead of storing a
        # cycle that pickle would resolve with a half-built network
        state = dict(self.__dict__)
        state.pop("outputs", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.outputs = tuple(NetworkOutput(self, i) for i in range(self.n_outputs))

    # numerics (all accept a leading batch axis on v: shape (..., n_inputs)) ----------------
    @property
    def weights(self) -> np.ndarray:
        """The network's weights (a copy)."""
        return self._weights.copy()

    def with_weights(self, weights) -> BaseNetwork:
        """The same network (same name, inputs, architecture and identity) carrying other
        weights; ``self`` is not changed.

        The copy's outputs are equal, as sympy symbols, to this network's, so a model's
        equations need no rewriting: :meth:`HybridModel.with_theta` gives a model whose
        networks carry its theta this way.

        Parameters
        ----------
        weights : array_like, shape (n_weights,)

        Returns
        -------
        BaseNetwork
        """
        w = self.check_weights(weights)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._weights = np.array(w, dtype=float)
        new.outputs = tuple(NetworkOutput(new, i) for i in range(new.n_outputs))
        return new

    def weight_names(self) -> list[str]:
        """Names of the weights, as they appear in a model's ``theta_names``."""
        return [f"{self.name}.w[{i}]" for i in range(self.n_weights)]

    def check_weights(self, w) -> np.ndarray:
        """``w`` as a float array of ``n_weights`` values, or a ParameterError."""
        w = np.asarray(w, dtype=float)
        if w.shape != (self.n_weights,):
            raise ParameterError(f"network '{self.name}' has {self.n_weights} weights; "
                                 f"got an array of shape {w.shape}")
        return w

    def forward(self, w, v):  # pragma: no cover - interface
        """The outputs N(v; w), shape (..., n_outputs), for inputs v of shape (..., n_inputs)."""
        raise NotImplementedError

    def point_function(self, w):
        """A function ``v -> N(v; w)`` for one input vector, specialised to fixed weights
        (the solver's hot path calls it once per right-hand-side evaluation)."""
        return lambda v: self.forward(w, v)

    def input_jacobian(self, w, v):  # pragma: no cover - interface
        """dN/dv, shape (..., n_outputs, n_inputs)."""
        raise NotImplementedError

    def weight_jacobian(self, w, v):  # pragma: no cover - interface
        """dN/dw, shape (..., n_outputs, n_weights)."""
        raise NotImplementedError

    def weight_vjp(self, w, v, cot):  # pragma: no cover - interface
        """sum over the batch of cot^T dN/dw, shape (n_weights,)."""
        raise NotImplementedError


class MLP(BaseNetwork):
    """A multilayer perceptron with closed-form derivatives.

    Parameters
    ----------
    name : str
        Identifier; outputs print as ``name[0]``, ``name[1]``, ...
    inputs : sequence of sympy expressions
        What the network sees: states, time, inputs, or expressions of them
        (e.g. ``[x**3, y**3]``).
    outputs : int
        Number of outputs.
    hidden : sequence of int
        Widths of the hidden layers (default ``[16, 16]``).
    activation : str
        Hidden-layer activation: ``"tanh"``, ``"rbf"`` (``exp(-z**2)``), ``"sigmoid"``,
        ``"softplus"``, ``"relu"``, ``"swish"`` or ``"identity"``. The output layer is linear.
    seed : int or None
        Seed of the Glorot-uniform initialisation (biases start at zero). The default, 0,
        gives the same initial weights every time, so a default fit run again is the same
        fit (as in model files, whose networks default to seed 0); ``None`` draws fresh
        random weights.
    weights : array_like, optional
        Explicit initial weights (flat, the layout of :meth:`unflatten`).
    scale : float
        Multiplies the initial weights of the output layer; a small value starts the model close
        to its physics-only part. Kept as the attribute ``scale`` (with ``seed``, it describes
        the initial weights in model files).

    Notes
    -----
    Layer ``l`` maps ``a_{l+1} = act(a_l @ W_l + b_l)`` with ``W_l`` of shape
    ``(n_l, n_{l+1})``; the flat weight vector stores ``W_0`` (C order), ``b_0``, ``W_1``, ...
    Derivatives are propagated in closed form: the input Jacobian by forward-mode products,
    vector-Jacobian products by backpropagation, both batched over leading axes.
    """

    def __init__(self, name: str, inputs, outputs: int, hidden: Sequence[int] = (16, 16),
                 activation: str = "tanh", seed: int | None = 0, weights=None,
                 scale: float = 1.0):
        self._init_common(name, inputs, outputs)
        hidden = [int(h) for h in hidden]
        if any(h < 1 for h in hidden):
            raise ModelError(f"network '{name}': hidden layer widths must be positive, "
                             f"got {hidden}")
        if activation not in ACTIVATIONS:
            raise ModelError(f"network '{name}': unknown activation {activation!r}; "
                             f"choose one of {sorted(ACTIVATIONS)}")
        self.hidden = tuple(hidden)
        self.activation = activation
        self._act, self._dact = ACTIVATIONS[activation]
        self.sizes = (self.n_inputs, *hidden, self.n_outputs)
        self._shapes = []
        offset = 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            self._shapes.append((offset, n_in, n_out))
            offset += n_in * n_out + n_out
        self.n_weights = offset
        # explicit weights do not come from a seed: keep None so that saving the model does
        # not claim they can be drawn again from one
        self.seed = seed if weights is None else None
        self.scale = float(scale)
        if weights is None:
            rng = np.random.default_rng(seed)
            parts = []
            for k, (_, n_in, n_out) in enumerate(self._shapes):
                lim = np.sqrt(6.0 / (n_in + n_out))
                W = rng.uniform(-lim, lim, size=(n_in, n_out))
                if k == len(self._shapes) - 1:
                    W = W * scale
                parts += [W.ravel(), np.zeros(n_out)]
            self._weights = np.concatenate(parts)
        else:
            self._weights = self.check_weights(weights).copy()

    def weight_names(self) -> list[str]:
        names = []
        for k, (_, n_in, n_out) in enumerate(self._shapes):
            names += [f"{self.name}.W{k}[{i},{j}]" for i in range(n_in) for j in range(n_out)]
            names += [f"{self.name}.b{k}[{j}]" for j in range(n_out)]
        return names

    def unflatten(self, w) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views ``[(W_0, b_0), (W_1, b_1), ...]`` into the flat weight vector."""
        layers = []
        for off, n_in, n_out in self._shapes:
            layers.append((w[off:off + n_in * n_out].reshape(n_in, n_out),
                           w[off + n_in * n_out:off + n_in * n_out + n_out]))
        return layers

    def forward(self, w, v):
        a = v
        layers = self.unflatten(w)
        for W, b in layers[:-1]:
            a = self._act(a @ W + b)
        W, b = layers[-1]
        return a @ W + b

    def point_function(self, w):
        layers = [(np.ascontiguousarray(W), b.copy()) for W, b in self.unflatten(w)]
        hidden, (W_out, b_out) = layers[:-1], layers[-1]
        act = self._act
        dot = np.dot

        def fwd(v):
            a = v
            for W, b in hidden:
                a = act(dot(a, W) + b)
            return dot(a, W_out) + b_out
        return fwd

    def _trace(self, w, v):
        """Forward pass keeping activations and activation derivatives."""
        layers = self.unflatten(w)
        acts, ders = [v], []
        a = v
        for W, b in layers[:-1]:
            z = a @ W + b
            a = self._act(z)
            acts.append(a)
            ders.append(self._dact(z, a))
        return layers, acts, ders

    def input_jacobian(self, w, v):
        return self.forward_and_input_jacobian(w, v)[1]

    def forward_and_input_jacobian(self, w, v):
        layers, acts, ders = self._trace(w, v)
        W, b = layers[-1]
        z = acts[-1] @ W + b
        if not ders:  # no hidden layer: a linear map
            return z, np.broadcast_to(W.T, np.shape(v)[:-1] + W.T.shape).copy()
        # forward mode: J_{l+1} = diag(d_l) W_l^T J_l, starting from W_0^T.
        J = ders[0][..., :, None] * layers[0][0].T
        for (Wl, _), d in zip(layers[1:-1], ders[1:]):
            J = d[..., :, None] * (Wl.T @ J)
        return z, W.T @ J

    def weight_vjp(self, w, v, cot):
        layers, acts, ders = self._trace(w, v)
        m = self.n_inputs
        A = [a.reshape(-1, a.shape[-1]) for a in acts]
        g = np.asarray(cot, dtype=float).reshape(-1, self.n_outputs)
        if A[0].shape[0] != g.shape[0]:
            A[0] = np.broadcast_to(A[0], (g.shape[0], m))
        grads = [None] * len(layers)
        D = [d.reshape(-1, d.shape[-1]) for d in ders]
        for k in range(len(layers) - 1, -1, -1):
            W = layers[k][0]
            grads[k] = ((A[k].T @ g).ravel(), g.sum(axis=0))
            if k:
                g = (g @ W.T) * D[k - 1]
        return np.concatenate([x for pair in grads for x in pair])

    def weight_jacobian(self, w, v):
        layers, acts, ders = self._trace(w, v)
        batch = np.shape(v)[:-1]
        no = self.n_outputs
        # g[..., o, j]: derivative of output o w.r.t. the pre-activation j of the current layer
        g = np.broadcast_to(np.eye(no), batch + (no, no))
        blocks = [None] * len(layers)
        for k in range(len(layers) - 1, -1, -1):
            W = layers[k][0]
            a = acts[k]
            dW = a[..., None, :, None] * g[..., :, None, :]          # (..., no, n_in, n_out)
            blocks[k] = (dW.reshape(batch + (no, -1)), g)
            if k:
                g = (g @ W.T) * ders[k - 1][..., None, :]
        return np.concatenate([x for pair in blocks for x in pair], axis=-1)


class Network(BaseNetwork):
    """A network defined by any autograd-differentiable function ``fun(w, v)``.

    Parameters
    ----------
    name : str
    inputs : sequence of sympy expressions
    outputs : int
    fun : callable
        ``fun(w, v) -> z`` written with ``autograd.numpy``; ``v`` has shape
        ``(..., n_inputs)`` and ``z`` must have shape ``(..., outputs)``.
    weights : array_like
        Initial flat weights.

    Notes
    -----
    Derivatives come from autograd (one trace per call: ~0.5-1 ms), so this is much slower in
    the solver than :class:`MLP`; use it for architectures the MLP cannot express and to check
    the MLP's closed forms.
    """

    def __init__(self, name: str, inputs, outputs: int, fun: Callable, weights):
        self._init_common(name, inputs, outputs)
        if not callable(fun):
            raise ModelTypeError(f"network '{name}': fun must be callable fun(w, v)")
        self.fun = fun
        self._weights = np.asarray(weights, dtype=float).ravel().copy()
        self.n_weights = self._weights.size
        z = np.asarray(fun(self._weights, np.zeros((1, self.n_inputs))))
        if z.shape != (1, self.n_outputs):
            raise ModelError(f"network '{name}': fun(w, v) with v of shape (1, {self.n_inputs}) "
                             f"returned shape {z.shape}; expected (1, {self.n_outputs})")

    def forward(self, w, v):
        return np.asarray(self.fun(w, v))

    def forward_and_input_jacobian(self, w, v):
        return self.forward(w, v), self.input_jacobian(w, v)

    def input_jacobian(self, w, v):
        from autograd import jacobian
        v = np.asarray(v, dtype=float)
        flat = v.reshape(-1, self.n_inputs)
        J = np.stack([jacobian(lambda x: self.fun(w, x[None, :])[0])(x) for x in flat])
        return J.reshape(v.shape[:-1] + (self.n_outputs, self.n_inputs))

    def weight_vjp(self, w, v, cot):
        import autograd.numpy as anp
        from autograd import grad
        cot = np.asarray(cot, dtype=float)
        return grad(lambda ww: anp.sum(self.fun(ww, v) * cot))(w)

    def weight_jacobian(self, w, v):
        from autograd import jacobian
        v = np.asarray(v, dtype=float)
        flat = v.reshape(-1, self.n_inputs)
        J = np.stack([jacobian(lambda ww, x=x: self.fun(ww, x[None, :])[0])(w) for x in flat])
        return J.reshape(v.shape[:-1] + (self.n_outputs, self.n_weights))
