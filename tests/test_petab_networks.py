"""PEtab SciML networks (dynlearn.petab.networks): the YAML graph, the layers against direct
references computed here, the HDF5 parameter layout, and derivatives. Every file is written by
the tests themselves."""

import pickle

import numpy as np
import pytest
import sympy as sp

h5py = pytest.importorskip("h5py")
yaml = pytest.importorskip("yaml")

import dynlearn as dl  # noqa: E402
from dynlearn.errors import PetabError  # noqa: E402
from dynlearn.petab.networks import (  # noqa: E402
    SUPPORTED_LAYERS,
    arrays_to_weights,
    network_from_yaml,
    parameter_arrays,
    parameter_slices,
    read_parameters,
    write_parameters,
)
from dynlearn.testing import central_difference  # noqa: E402


def node(name, op, target, args=(), **kwargs):
    return {"name": name, "op": op, "target": target, "args": list(args), "kwargs": kwargs}


def spec(layers, forward, inputs=("x",)):
    return {"nn_model_id": "net0", "inputs": [{"input_id": i} for i in inputs],
            "layers": [{"layer_id": i, "layer_type": t, "args": a} for i, t, a in layers],
            "forward": forward}


def mlp_spec():
    """Linear(3, 4) -> tanh -> Linear(4, 2), as PyTorch's exporter writes it."""
    return spec(
        [("l1", "Linear", {"in_features": 3, "out_features": 4, "bias": True}),
         ("l2", "Linear", {"in_features": 4, "out_features": 2, "bias": True})],
        [node("x", "placeholder", "x"), node("l1", "call_module", "l1", ["x"]),
         node("tanh", "call_method", "tanh", ["l1"]), node("l2", "call_module", "l2", ["tanh"]),
         node("output", "output", "output", ["l2"])])


def write_yaml(path, content):
    path.write_text(yaml.safe_dump(content))
    return path


def write_h5(path, net_id, arrays):
    with h5py.File(path, "w") as fh:
        fh.create_group("metadata").create_dataset("pytorch_format", data=True)
        grp = fh.create_group("parameters").create_group(net_id)
        for lid, group in arrays.items():
            lg = grp.create_group(lid)
            for name, value in group.items():
                lg.create_dataset(name, data=value)
    return path


def test_linear_tanh_network_matches_a_hand_computed_forward(tmp_path):
    rng = np.random.default_rng(1)
    W1, b1 = rng.standard_normal((4, 3)), rng.standard_normal(4)
    W2, b2 = rng.standard_normal((2, 4)), rng.standard_normal(2)
    net = network_from_yaml(write_yaml(tmp_path / "net.yaml", mlp_spec()))
    ps = write_h5(tmp_path / "ps.hdf5", "net0",
                  {"l1": {"weight": W1, "bias": b1}, "l2": {"weight": W2, "bias": b2}})
    w = read_parameters(ps, net)
    assert net.n_weights == 12 + 4 + 8 + 2 and net.standalone
    assert net.input_shapes == [(3,)] and net.output_shapes == [(2,)]
    v = rng.standard_normal(3)
    expected = W2 @ np.tanh(W1 @ v + b1) + b2          # PyTorch: y = x W^T + b
    assert np.allclose(net.forward(w, v), expected, rtol=1e-13, atol=1e-13)
    # in a model: sympy inputs, rows of a batch evaluated independently
    x, y, z = sp.symbols("x y z")
    in_model = network_from_yaml(tmp_path / "net.yaml", name="nn", inputs=[x, y, z],
                                 weights=w)
    assert in_model.n_inputs == 3 and in_model.n_outputs == 2 and str(in_model[1]) == "nn[1]"
    V = rng.standard_normal((5, 3))
    out = in_model.forward(w, V)
    assert out.shape == (5, 2)
    assert np.allclose(out, [W2 @ np.tanh(W1 @ r + b1) + b2 for r in V], rtol=1e-13)


def conv2d_loop(x, W, b, stride, padding, dilation, groups):
    """Direct convolution as PyTorch defines it, one output element at a time."""
    N, C, H, Wd = x.shape
    O, Cg, kh, kw = W.shape
    xp = np.zeros((N, C, H + 2 * padding[0], Wd + 2 * padding[1]))
    xp[:, :, padding[0]:padding[0] + H, padding[1]:padding[1] + Wd] = x
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (Wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((N, O, Ho, Wo))
    per_group = O // groups
    for n in range(N):
        for o in range(O):
            g = o // per_group
            for i in range(Ho):
                for j in range(Wo):
                    acc = b[o]
                    for c in range(Cg):
                        for p in range(kh):
                            for q in range(kw):
                                acc += W[o, c, p, q] * xp[n, g * Cg + c,
                                                          i * stride[0] + p * dilation[0],
                                                          j * stride[1] + q * dilation[1]]
                    out[n, o, i, j] = acc
    return out


def test_conv2d_matches_a_direct_loop():
    args = {"in_channels": 4, "out_channels": 6, "kernel_size": [3, 2], "stride": [2, 1],
            "padding": [1, 2], "dilation": [1, 2], "groups": 2, "bias": True}
    net = network_from_yaml(spec([("c", "Conv2d", args)],
                                 [node("x", "placeholder", "x"),
                                  node("c", "call_module", "c", ["x"]),
                                  node("output", "output", "output", ["c"])]))
    rng = np.random.default_rng(2)
    W, b = rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(6)
    w = arrays_to_weights(net, {"c": {"weight": W, "bias": b}})
    x = rng.standard_normal((2, 4, 7, 8))
    ref = conv2d_loop(x, W, b, (2, 1), (1, 2), (1, 2), 2)
    out = net.forward(w, x)
    assert out.shape == ref.shape == (2, 6, 4, 10)
    assert np.allclose(out, ref, rtol=1e-12, atol=1e-12)
    # an unbatched (C, H, W) input, as PyTorch accepts it
    assert np.allclose(net.forward(w, x[1]), ref[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose1d_matches_a_direct_scatter(groups):
    c_in, c_out, k, s, p, d, op = 4, 6, 3, 2, 1, 2, 1
    args = {"in_channels": c_in, "out_channels": c_out, "kernel_size": [k], "stride": [s],
            "padding": [p], "output_padding": [op], "dilation": [d], "groups": groups}
    net = network_from_yaml(spec([("t", "ConvTranspose1d", args)],
                                 [node("x", "placeholder", "x"),
                                  node("t", "call_module", "t", ["x"]),
                                  node("output", "output", "output", ["t"])]))
    rng = np.random.default_rng(3)
    per_group = c_out // groups
    W, b = rng.standard_normal((c_in, per_group, k)), rng.standard_normal(c_out)
    x = rng.standard_normal((c_in, 5))
    L_out = (5 - 1) * s - 2 * p + d * (k - 1) + op + 1
    ref = np.tile(b[:, None], (1, L_out))
    for c in range(c_in):               # every input element spreads its kernel
        g = c // (c_in // groups)
        for i in range(5):
            for j in range(k):
                pos = i * s - p + j * d
                if 0 <= pos < L_out:
                    ref[g * per_group:(g + 1) * per_group, pos] += x[c, i] * W[c, :, j]
    w = arrays_to_weights(net, {"t": {"weight": W, "bias": b}})
    assert net.forward(w, x).shape == ref.shape
    assert np.allclose(net.forward(w, x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,numpy_mode", [("zeros", "constant"), ("reflect", "reflect"),
                                             ("replicate", "edge"), ("circular", "wrap")])
def test_conv_padding_modes_match_numpy_pad(mode, numpy_mode):
    args = {"in_channels": 1, "out_channels": 1, "kernel_size": 3, "padding": 2,
            "padding_mode": mode, "bias": False}
    net = network_from_yaml(spec([("c", "Conv1d", args)],
                                 [node("x", "placeholder", "x"),
                                  node("c", "call_module", "c", ["x"]),
                                  node("g", "call_function", "gelu", ["c"], approximate="tanh"),
                                  node("output", "output", "output", ["g"])]))
    rng = np.random.default_rng(10)
    W, x = rng.standard_normal((1, 1, 3)), rng.standard_normal((1, 6))
    xp = np.pad(x[0], 2, mode=numpy_mode)
    conv = np.array([W[0, 0] @ xp[i:i + 3] for i in range(xp.size - 2)])
    ref = 0.5 * conv * (1 + np.tanh(np.sqrt(2 / np.pi) * (conv + 0.044715 * conv ** 3)))
    w = arrays_to_weights(net, {"c": {"weight": W}})
    assert np.allclose(net.forward(w, x)[0], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["MaxPool1d", "AvgPool1d"])
@pytest.mark.parametrize("include_pad", [True, False])
def test_pooling_with_padding_and_ceil_mode_matches_a_loop(kind, include_pad):
    k, s, p, L = 3, 2, 1, 8
    args = {"kernel_size": k, "stride": s, "padding": p, "ceil_mode": True}
    if kind == "AvgPool1d":
        args["count_include_pad"] = include_pad
    net = network_from_yaml(spec([("p", kind, args)],
                                 [node("x", "placeholder", "x"),
                                  node("p", "call_module", "p", ["x"]),
                                  node("output", "output", "output", ["p"])]))
    x = np.random.default_rng(4).standard_normal((2, L))
    n_out = -(-(L + 2 * p - k) // s) + 1
    if (n_out - 1) * s >= L + p:        # the last window must start inside the input
        n_out -= 1
    ref = np.empty((2, n_out))
    for o in range(n_out):
        start = o * s - p
        lo, hi = max(start, 0), min(start + k, L)
        if kind == "MaxPool1d":
            ref[:, o] = x[:, lo:hi].max(axis=1)
        else:
            div = min(start + k, L + p) - start if include_pad else hi - lo
            ref[:, o] = x[:, lo:hi].sum(axis=1) / div
    assert np.allclose(net.forward(net.weights, x), ref, rtol=1e-13, atol=1e-13)


def test_batch_norm_uses_the_batch_statistics():
    net = network_from_yaml(spec([("bn", "BatchNorm1d", {"num_features": 3, "eps": 1e-5})],
                                 [node("x", "placeholder", "x"),
                                  node("bn", "call_module", "bn", ["x"]),
                                  node("output", "output", "output", ["bn"])]))
    rng = np.random.default_rng(5)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    x = rng.standard_normal((4, 3, 6))
    mean = x.mean(axis=(0, 2), keepdims=True)
    var = x.var(axis=(0, 2), keepdims=True)
    ref = (x - mean) / np.sqrt(var + 1e-5) * gamma[:, None] + beta[:, None]
    w = arrays_to_weights(net, {"bn": {"weight": gamma, "bias": beta}})
    assert np.allclose(net.forward(w, x), ref, rtol=1e-12, atol=1e-12)


def test_tensor_functions_and_batched_rows_agree_with_one_sample_at_a_time():
    """Dims in a graph count within one sample: in a model, a batch of rows gives what each
    row gives alone, for functions that take dims (permute, softmax, sum, unsqueeze, cat,
    flatten, reshape)."""
    fwd = [node("u", "placeholder", "u"),
           node("p", "call_method", "permute", ["u", 1, 0]),
           node("s", "call_function", "softmax", ["p"], dim=0),
           node("m", "call_function", "mul", ["s", "p"]),
           node("r", "call_method", "sum", ["m"], dim=1),
           node("t", "call_method", "unsqueeze", ["r", 0]),
           node("c", "call_function", "cat", [["t", "t"]], dim=0),
           node("f", "call_function", "flatten", ["c"]),
           node("v", "call_method", "view", ["f", 2, 3]),
           node("g", "call_method", "reshape", ["v", -1]),
           node("l", "call_module", "l", ["g"]),
           node("o", "call_function", "log_softmax", ["l"], dim=-1),
           node("output", "output", "output", ["o"])]
    layers = [("l", "Linear", {"in_features": 6, "out_features": 2})]
    rng = np.random.default_rng(11)
    standalone = network_from_yaml(spec(layers, fwd, inputs=("u",)), seed=2)
    w = standalone.weights
    u = rng.standard_normal((2, 3))
    p = u.T
    e = np.exp(p - p.max(axis=0))
    r = (e / e.sum(axis=0) * p).sum(axis=1)
    lin = parameter_arrays(standalone)["l"]
    z = lin["weight"] @ np.concatenate([r, r]) + lin["bias"]
    ref = z - np.log(np.exp(z).sum())
    assert np.allclose(standalone.forward(w, u), ref, rtol=1e-12, atol=1e-12)
    syms = sp.symbols("u0:6")
    in_model = network_from_yaml(spec(layers, fwd, inputs=("u",)), name="nn", inputs=syms,
                                 input_shapes=[(2, 3)], weights=w)
    assert in_model.output_shapes == [(2,)] and not in_model.closed_form
    V = rng.standard_normal((4, 6))
    rows = np.array([standalone.forward(w, v.reshape(2, 3)) for v in V])
    assert np.allclose(in_model.forward(w, V), rows, rtol=1e-12, atol=1e-12)
    assert np.allclose(in_model.forward(w, V.reshape(2, 2, 6)), rows.reshape(2, 2, 2),
                       rtol=1e-12, atol=1e-12)


def single(layer_type, args):
    return network_from_yaml(spec([("m", layer_type, args)],
                                  [node("x", "placeholder", "x"),
                                   node("m", "call_module", "m", ["x"]),
                                   node("output", "output", "output", ["m"])]))


def test_instance_and_layer_norm_and_adaptive_pools_match_numpy():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 5, 7))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    net = single("InstanceNorm2d", {"num_features": 3, "affine": True})
    mean, var = x.mean(axis=(2, 3), keepdims=True), x.var(axis=(2, 3), keepdims=True)
    ref = (x - mean) / np.sqrt(var + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    w = arrays_to_weights(net, {"m": {"weight": gamma, "bias": beta}})
    assert np.allclose(net.forward(w, x), ref, rtol=1e-12, atol=1e-12)
    net = single("LayerNorm", {"normalized_shape": [5, 7]})
    g, b = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    ref = (x - mean) / np.sqrt(var + 1e-5) * g + b
    w = arrays_to_weights(net, {"m": {"weight": g, "bias": b}})
    assert np.allclose(net.forward(w, x), ref, rtol=1e-12, atol=1e-12)
    for kind, reduce in (("AdaptiveAvgPool2d", np.mean), ("AdaptiveMaxPool2d", np.max)):
        net = single(kind, {"output_size": [2, 3]})
        ref = np.empty((2, 3, 2, 3))
        for i in range(2):              # PyTorch's windows: [floor(i L/o), ceil((i+1) L/o))
            for j in range(3):
                h0, h1 = (i * 5) // 2, -(-(i + 1) * 5 // 2)
                w0, w1 = (j * 7) // 3, -(-(j + 1) * 7 // 3)
                ref[:, :, i, j] = reduce(x[:, :, h0:h1, w0:w1], axis=(2, 3))
        assert np.allclose(net.forward(net.weights, x), ref, rtol=1e-12, atol=1e-12), kind


def test_parameters_round_trip_through_hdf5_bit_for_bit(tmp_path):
    net = network_from_yaml(mlp_spec(), seed=7)
    w = np.random.default_rng(6).standard_normal(net.n_weights)
    write_parameters(tmp_path / "ps.hdf5", net, w)
    with h5py.File(tmp_path / "ps.hdf5", "r") as fh:   # the standard's layout
        assert bool(fh["metadata/pytorch_format"][()])
        assert fh["parameters/net0/l1/weight"].shape == (4, 3)
        assert fh["parameters/net0/l2/bias"].shape == (2,)
    back = read_parameters(tmp_path / "ps.hdf5", net)
    assert np.array_equal(back, w)
    arrays = parameter_arrays(net, w)
    assert np.array_equal(arrays["l1"]["weight"].ravel(), w[:12])
    assert np.array_equal(arrays_to_weights(net, arrays), w)
    # a file with some layers only: the others keep the weights given
    write_h5(tmp_path / "part.hdf5", "net0", {"l2": arrays["l2"]})
    with pytest.raises(PetabError, match="no values for l1.weight"):
        read_parameters(tmp_path / "part.hdf5", net)
    base = np.zeros(net.n_weights)
    part = read_parameters(tmp_path / "part.hdf5", net, strict=False, weights=base)
    sl = parameter_slices(net)
    assert np.array_equal(part[sl["l2.weight"]], w[sl["l2.weight"]])
    assert not part[sl["l1.weight"]].any()
    # arrays in another shape than PyTorch's are refused
    write_h5(tmp_path / "bad.hdf5", "net0",
             {"l1": {"weight": arrays["l1"]["weight"].T, "bias": arrays["l1"]["bias"]},
              "l2": arrays["l2"]})
    with pytest.raises(PetabError, match=r"l1.weight.*shape \(3, 4\).*\(4, 3\)"):
        read_parameters(tmp_path / "bad.hdf5", net)


def test_parameter_slices_cover_the_weights_exactly_once():
    layers = [("c", "Conv2d", {"in_channels": 1, "out_channels": 2, "kernel_size": 3}),
              ("n", "BatchNorm2d", {"num_features": 2}),
              ("f", "Flatten", {}),
              ("d", "Dropout", {"p": 0.3}),
              ("l", "Linear", {"in_features": 8, "out_features": 2, "bias": False}),
              ("ln", "LayerNorm", {"normalized_shape": [2]})]
    fwd = [node("x", "placeholder", "x")]
    prev = "x"
    for lid, _, _ in layers:
        fwd.append(node(lid, "call_module", lid, [prev]))
        prev = lid
    fwd.append(node("output", "output", "output", [prev]))
    net = network_from_yaml(spec(layers, fwd))
    sl = parameter_slices(net)
    assert list(sl) == ["c.weight", "c.bias", "n.weight", "n.bias", "l.weight",
                        "ln.weight", "ln.bias"]
    hits = np.zeros(net.n_weights, dtype=int)
    for s in sl.values():
        hits[s] += 1
    assert (hits == 1).all()
    assert len(net.weight_names()) == net.n_weights
    assert net.forward(net.weights, np.ones((2, 1, 4, 4))).shape == (2, 2)


def test_weight_and_input_gradients_match_finite_differences():
    from autograd import grad
    layers = [("c", "Conv1d", {"in_channels": 2, "out_channels": 3, "kernel_size": 3,
                               "padding": 1}),
              ("f", "Flatten", {"start_dim": 0}),
              ("l", "Linear", {"in_features": 15, "out_features": 2})]
    fwd = [node("x", "placeholder", "x"), node("c", "call_module", "c", ["x"]),
           node("a", "call_function", "gelu", ["c"]), node("f", "call_module", "f", ["a"]),
           node("l", "call_module", "l", ["f"]),
           node("s", "call_function", "softmax", ["l"], dim=0),
           node("output", "output", "output", ["s"])]
    net = network_from_yaml(spec(layers, fwd), seed=3)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 5))
    c = rng.standard_normal(2)
    w = net.weights

    def f(ww):
        return (net.forward(ww, x) * c).sum()

    g = grad(f)(w)
    fd = central_difference(f, w, step=1e-6, relative=False)
    rel = np.abs(g - fd).max() / np.abs(fd).max()
    assert rel < 1e-6, rel


@pytest.mark.parametrize("closed_form", [True, False])
def test_network_in_a_model_gives_the_mlp_gradient(closed_form):
    """A Linear-tanh-Linear file in a hybrid model: same loss gradient as dl.MLP with the
    same (transposed) weights, through the model's sensitivities, whether the network is
    computed in closed form or through autograd."""
    x, y = sp.symbols("x y")
    spec_ = mlp_spec()
    spec_["layers"][0]["args"]["in_features"] = 2
    mlp = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[4], activation="tanh", seed=3)
    (W0, b0), (W1, b1) = mlp.unflatten(mlp.weights)
    petab_w = np.concatenate([W0.T.ravel(), b0, W1.T.ravel(), b1])
    net = network_from_yaml(spec_, name="nn", inputs=[x, y], weights=petab_w,
                            closed_form=closed_form)
    assert net.closed_form == closed_form
    t = np.linspace(0, 2, 7)
    truth = dl.HybridModel(states=[x, y], rhs={x: x - x * y, y: -y + x * y})
    data = dl.Dataset.from_frame(dl.simulate(truth, t, [1.0, 2.0]).to_frame())
    grads = []
    for nn in (mlp, net):
        m = dl.HybridModel(states=[x, y], rhs={x: x - 0.1 * nn[0], y: -y + 0.1 * nn[1]})
        grads.append(dl.loss_and_grad(m, data, m.theta0, rtol=1e-10, atol=1e-10)[1])
    # map the PEtab gradient (W stored out x in) back to the MLP's order (in x out)
    sl = parameter_slices(net)
    g = grads[1]
    back = np.concatenate([g[sl["l1.weight"]].reshape(4, 2).T.ravel(), g[sl["l1.bias"]],
                           g[sl["l2.weight"]].reshape(2, 4).T.ravel(), g[sl["l2.bias"]]])
    assert np.abs(back - grads[0]).max() <= 1e-8 * np.abs(grads[0]).max()
    # a model's network survives pickling (Dask workers)
    clone = pickle.loads(pickle.dumps(net))
    v = np.array([[0.3, -0.2]])
    assert np.array_equal(clone.forward(clone.weights, v), net.forward(net.weights, v))


def test_closed_form_and_autograd_derivatives_agree():
    """A plain MLP chain (here with a cat of two inputs, layers listed out of call order) is
    computed as dl.MLP in a model; its derivatives equal autograd's, in the network's weight
    order. A graph that is not one (softplus) keeps autograd, batched over rows."""
    from dynlearn.core.neural import Network
    a, b, c = sp.symbols("a b c")
    chain = spec(
        [("out", "Linear", {"in_features": 4, "out_features": 2}),
         ("hid", "Linear", {"in_features": 3, "out_features": 4})],
        [node("u", "placeholder", "u"), node("v", "placeholder", "v"),
         node("cat", "call_function", "cat", [["u", "v"]], dim=0),
         node("hid", "call_module", "hid", ["cat"]),
         node("act", "call_function", "relu", ["hid"], inplace=False),
         node("out", "call_module", "out", ["act"]),
         node("output", "output", "output", ["out"])], inputs=("u", "v"))
    fast = network_from_yaml(chain, name="nn", inputs=[a, b, c], input_shapes=[(2,), (1,)],
                             seed=1)
    slow = network_from_yaml(chain, name="nn", inputs=[a, b, c], input_shapes=[(2,), (1,)],
                             seed=1, closed_form=False)
    assert fast.closed_form and not slow.closed_form
    soft = dict(chain, forward=[dict(n) for n in chain["forward"]])
    soft["forward"][4] = node("act", "call_function", "softplus", ["hid"])
    other = network_from_yaml(soft, name="nn", inputs=[a, b, c], input_shapes=[(2,), (1,)],
                              seed=1)
    assert not other.closed_form
    rng = np.random.default_rng(9)
    w = rng.standard_normal(fast.n_weights)
    V = rng.standard_normal((6, 3))
    cot = rng.standard_normal((6, 2))
    for method in ("forward", "input_jacobian", "weight_jacobian"):
        ref = getattr(Network, method)(slow, w, V)      # autograd, row by row
        assert np.allclose(getattr(fast, method)(w, V), ref, rtol=1e-12, atol=1e-12), method
        assert np.allclose(getattr(slow, method)(w, V), ref, rtol=1e-12, atol=1e-12), method
        assert np.allclose(getattr(other, method)(w, V),
                           getattr(Network, method)(other, w, V), rtol=1e-12, atol=1e-12)
    assert np.allclose(fast.weight_vjp(w, V, cot), slow.weight_vjp(w, V, cot), rtol=1e-12)
    assert np.allclose(fast.point_function(w)(V[0]), slow.forward(w, V[0]), rtol=1e-13)
    z, J = fast.forward_and_input_jacobian(w, V[0])
    assert z.shape == (2,) and J.shape == (2, 3)


def test_unsupported_layer_and_function_are_named(tmp_path):
    bad = spec([("rnn", "LSTM", {"input_size": 2, "hidden_size": 3})],
               [node("x", "placeholder", "x"), node("call_rnn", "call_module", "rnn", ["x"]),
                node("output", "output", "output", ["call_rnn"])])
    path = write_yaml(tmp_path / "bad.yaml", bad)
    with pytest.raises(PetabError) as err:
        network_from_yaml(path)
    msg = str(err.value)
    assert "LSTM" in msg and "'rnn'" in msg and "call_rnn" in msg and str(path) in msg
    assert "LSTM" not in SUPPORTED_LAYERS
    fun = mlp_spec()
    fun["forward"][2] = node("tanh", "call_function", "frobnicate", ["l1"])
    with pytest.raises(PetabError, match=r"node 'tanh'.*frobnicate"):
        network_from_yaml(write_yaml(tmp_path / "fun.yaml", fun))
    assert issubclass(PetabError, dl.DynlearnError)
    # an input of the wrong size names the layer
    net = network_from_yaml(mlp_spec())
    with pytest.raises(PetabError, match=r"layer 'l1' \(Linear\): expects 3 input features"):
        net.forward(net.weights, np.ones(4))
