"""fastadam.keras with Keras variables on a CUDA device, without a GPU.

The torch CPU wheel cannot make CUDA tensors, so the device path of
:mod:`fastadam.keras._torch_views` is driven with CPU tensors posing as CUDA ones
(the ``fake_gpu`` fixture): ``is_cuda`` says yes, and the cuda backend's kernels
(:mod:`fastadam.kernels.cuda`, :mod:`fastadam.kernels.cuda_keras`) run under
numba's CUDA simulator on the tensors' memory, each tensor handed to them through
a ``__cuda_array_interface__`` over its storage.  Everything of the device path
runs as it would on a GPU -- the torch flat buffers of the packs, the gradient
gather, the norms reduced with torch ops, the clip into a torch scratch, the
dispatch to the cuda kernels, the kernels themselves -- except that the memory is
host memory and nothing checks that a new buffer landed on the right GPU.

As in ``test_keras_fit.py``, results are compared with Keras 3's own optimizer
from the same initial weights on the same batches (float32: rtol 1e-4; float64:
1e-9), and with fastadam's host path (float32: a few ulps; float64: 1e-12).
"""

from __future__ import annotations


import numpy as np
import pytest
import skips

keras = skips.keras_on_torch()

import torch  # noqa: E402

import fastadam.keras as FK  # noqa: E402
from fastadam import _backends  # noqa: E402
from fastadam._errors import BackendUnavailableError  # noqa: E402
from test_keras_fit import (BATCH, FIT_CASES, STEPS, case_id, data, floatx,  # noqa: E402,F401
                            max_rel, seed_model)

skips.cuda_backend()

from fastadam.keras import _torch_views as tv  # noqa: E402
from fastadam.keras import _transforms  # noqa: E402
from fastadam.kernels import cuda as K  # noqa: E402
from fastadam.kernels import cuda_keras as KK  # noqa: E402

if not K.SIMULATOR:  # pragma: no cover - the fakes describe host memory
    pytest.skip("CPU tensors posing as CUDA ones: simulator only", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

_NP = {torch.float32: "<f4", torch.float64: "<f8"}


class TensorCAI:
    """A torch CPU tensor's storage as a device array (``__cuda_array_interface__``,
    over host memory: the simulator's device memory)."""

    def __init__(self, t):
        self.t = t
        self.__cuda_array_interface__ = {
            "shape": tuple(t.shape), "typestr": _NP[t.dtype], "data": (t.data_ptr(), False),
            "strides": None, "version": 3, "stream": None}


class FakeGPU:
    """What the device path handed the cuda kernels: ``(module, kernel, arrays)``."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.sumsq_args = []
        monkeypatch.setattr(tv, "is_cuda", lambda t: True)
        for mod in (K, KK):
            monkeypatch.setattr(mod, "run", self._runner(mod.__name__.split(".")[-1],
                                                         mod.run))
        real_sumsq = tv.sumsq
        monkeypatch.setattr(tv, "sumsq", lambda gs: (self.sumsq_args.append(list(gs)),
                                                     real_sumsq(gs))[1])

        def no_host_clip(self, g):
            raise AssertionError("the host clip ran on the device path")
        monkeypatch.setattr(_transforms.GradientTransformMixin, "_clip_values", no_host_clip)
        monkeypatch.setattr(K, "BLOCK_SIZE", 16)
        monkeypatch.setattr(K, "MAX_BLOCKS", 3)
        K._view_cache.clear()

    def _runner(self, modname, real):
        def run(name, arrays, scalars):
            arrays = list(arrays)
            assert all(isinstance(a, torch.Tensor) and a.dim() == 1 for a in arrays), arrays
            self.calls.append((modname, name, arrays))
            real(name, [TensorCAI(a) for a in arrays], scalars)
        return run


@pytest.fixture
def fake_gpu(monkeypatch):
    _backends.reset_cache()     # a cuda backend loaded while ``run`` is patched keeps
    yield FakeGPU(monkeypatch)  # the fake: the registry forgets it before and after
    K._view_cache.clear()
    _backends.reset_cache()


def fit(name, kw, dtype, mod=FK, steps=STEPS):
    x, y = data(dtype, n=steps * BATCH)
    m = seed_model()
    opt = getattr(mod, name)(**kw)
    m.compile(loss="binary_crossentropy", optimizer=opt)
    m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert int(m.optimizer.iterations) == steps
    return m, [v.numpy().copy() for v in m.weights]


def _family(name, kw):
    return "cuda" if name in ("Adam", "AdamW", "Nadam") else "cuda_keras"


@pytest.mark.parametrize("case", FIT_CASES, ids=case_id)
def test_fit_float32_on_the_device_path(case, fake_gpu, monkeypatch):
    """Every optimizer: fit() through the cuda kernels equals Keras' own (rtol 1e-4) and
    the host path (a few float32 ulps); every step is one kernel call on the pack of
    the seed model's variables (all small), torch tensors, in the right module."""
    name, kw = case
    m, dev = fit(name, kw, "float32")
    assert len(fake_gpu.calls) == STEPS
    assert {(c[0], len(c[2][0])) for c in fake_gpu.calls} == \
        {(_family(name, kw), sum(int(np.prod(v.shape)) for v in m.trainable_variables))}
    monkeypatch.undo()                          # the host path, for comparison
    _, host = fit(name, kw, "float32")
    _, theirs = fit(name, kw, "float32", mod=keras.optimizers)
    for a, b, c in zip(dev, host, theirs):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a, b, rtol=4e-7, atol=1e-7)


@pytest.mark.parametrize("case", [FIT_CASES[1], FIT_CASES[4], FIT_CASES[9]], ids=case_id)
def test_fit_float64_on_the_device_path(case, fake_gpu, floatx):
    floatx("float64")
    _, dev = fit(*case, "float64")
    _, theirs = fit(*case, "float64", mod=keras.optimizers)
    assert all(a.dtype == np.float64 for a in dev)
    assert max_rel(dev, theirs) < 1e-9


CLIPS = [("Adam", dict(clipnorm=0.05)), ("SGD", dict(momentum=0.9, clipnorm=0.05)),
         ("RMSprop", dict(global_clipnorm=0.05)), ("Adagrad", dict(clipvalue=0.002)),
         ("Adam", dict(loss_scale_factor=128.0)),
         ("Nadam", dict(loss_scale_factor=64.0, global_clipnorm=0.05)),
         ("SGD", dict(loss_scale_factor=32.0, clipvalue=0.002))]


@pytest.mark.parametrize("case", CLIPS, ids=lambda c: f"{c[0]}-{'-'.join(c[1])}")
def test_clipping_and_loss_scale_on_the_device(case, fake_gpu, floatx):
    """The norms are reduced with torch ops on the gradients' device (sumsq, given
    torch tensors: one copy to the host per step), the value clip into a torch
    scratch (the host clip would raise here); results as Keras' (float64)."""
    floatx("float64")
    name, kw = case
    _, dev = fit(name, kw, "float64")
    norm_clip = "clipnorm" in kw or "global_clipnorm" in kw
    if norm_clip:
        assert len(fake_gpu.sumsq_args) == STEPS
        assert all(isinstance(g, torch.Tensor) for gs in fake_gpu.sumsq_args for g in gs)
    _, theirs = fit(name, kw, "float64", mod=keras.optimizers)
    assert max_rel(dev, theirs) < (1e-7 if norm_clip else 1e-9)


def test_clipvalue_float32_and_its_scratch(fake_gpu):
    _, dev = fit("Adam", dict(clipvalue=0.002, loss_scale_factor=4.0), "float32")
    _, theirs = fit("Adam", dict(clipvalue=0.002, loss_scale_factor=4.0), "float32",
                    mod=keras.optimizers)
    for a, b in zip(dev, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_packs_and_state_are_torch_buffers_on_the_variables_device(fake_gpu, monkeypatch):
    """The pack's flat buffers are torch tensors (device memory on a GPU); the
    variables' and the state variables' storage are views of them; a variable over
    PACK_MAX is its own chunk, on its own storage."""
    monkeypatch.setattr(tv, "PACK_MAX", 50)          # the kernel (12 x 8) stays apart
    m, _ = fit("Adam", {}, "float32", steps=2)
    opt = m.optimizer
    lay = opt._klayout
    (pack, _), = lay.packs
    assert isinstance(pack.p, torch.Tensor) and isinstance(pack.g, torch.Tensor)
    assert all(isinstance(a, torch.Tensor) for a in pack.state.values())
    kernel, bias, k2, b2 = m.trainable_variables
    members = [e.var for e in pack.entries]
    assert [v.path for v in members] == [bias.path, k2.path, b2.path]
    base = pack.p.data_ptr()
    size = pack.p.element_size()
    assert [tv.tensor(v).data_ptr() for v in members] == \
        [base + size * e.off for e in pack.entries]
    mom = opt._kstate["momentum"]
    i = opt._get_variable_index(bias)
    assert tv.tensor(mom[i]).data_ptr() == pack.state["momentum"].data_ptr() + \
        size * pack.entries[0].off
    ((_, single),) = lay.singles
    assert single.var is kernel and single.p.data_ptr() == tv.tensor(kernel).data_ptr()
    # two calls per step: the pack and the kernel, both through the cuda backend
    assert [c[2][0].numel() for c in fake_gpu.calls[-2:]] == [8 + 8 + 1, 96]


def test_custom_loop_with_numpy_and_torch_gradients(fake_gpu, floatx):
    """A NumPy gradient for a device variable is copied to the device; a torch one of
    another dtype is cast (as Keras' ops cast it); the result is the host path's."""
    floatx("float64")
    rng = np.random.default_rng(1)
    shapes = [(5, 3), (3,), (6000,)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(4)]
    feed = [lambda g: g.copy(), lambda g: torch.from_numpy(g.astype(np.float32)),
            lambda g: torch.from_numpy(g.copy())]

    def run():
        vs = [keras.Variable(a.copy()) for a in init]
        opt = FK.RMSprop(learning_rate=0.05, momentum=0.5)
        for gs in grads:
            opt.apply([f(g) for f, g in zip(feed, gs)], vs)
        return [v.numpy() for v in vs]
    dev = run()
    fake_gpu_calls = len(fake_gpu.calls)
    with pytest.MonkeyPatch.context() as mp:      # the host path
        mp.setattr(tv, "is_cuda", lambda t: False)
        host = run()
    out = [dev, host]
    assert len(fake_gpu.calls) == fake_gpu_calls == 4 * 2   # the pack and the big one
    assert max_rel(*out) < 1e-12


def test_gradient_sharing_a_variables_memory_is_refused(fake_gpu):
    v = keras.Variable(np.ones(4, dtype="float32"))
    opt = FK.SGD(learning_rate=0.5)
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory with variables\[0\]"):
        opt.apply([tv.tensor(v)], [v])
    np.testing.assert_array_equal(v.numpy(), np.ones(4))
    assert fake_gpu.calls == [] and int(opt.iterations) == 0


def test_refused_where_the_cuda_backend_cannot_run(fake_gpu, monkeypatch):
    """No numba-cuda / no driver: a clear refusal naming the variable, its device, the
    reason and what works, before anything is written."""
    def no_cuda(name):
        if name == "cuda":
            raise BackendUnavailableError("the cuda backend is not available: no CUDA GPU "
                                          "or driver found")
        return real(name)
    real = _backends.get_backend
    monkeypatch.setattr(_backends, "get_backend", no_cuda)
    m = seed_model()
    w0 = [v.numpy().copy() for v in m.weights]
    m.compile(loss="binary_crossentropy", optimizer=FK.Adam())
    x, y = data("float32", n=BATCH)
    with pytest.raises(BackendUnavailableError) as e:
        m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    msg = str(e.value)
    for part in ("variables[0]", "is on cpu", "fastadam's cuda backend", "no CUDA GPU",
                 "pip install 'fastadam[cuda]'", "keras.optimizers.Adam"):
        assert part in msg, (part, msg)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(w0, m.weights))
    assert int(m.optimizer.iterations) == 0 and fake_gpu.calls == []


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_host_backends_are_refused_for_device_variables(fake_gpu, backend):
    v = keras.Variable(np.ones(3, dtype="float32"))
    opt = FK.Adam(backend=backend)
    with pytest.raises(ValueError, match=rf"backend='{backend}' runs on host memory; use "
                                         r"backend='auto'"):
        opt.apply([torch.ones(3)], [v])
    np.testing.assert_array_equal(v.numpy(), np.ones(3))


def test_other_devices_are_refused():
    """A device that is neither the CPU nor CUDA (here torch's meta device)."""
    v = keras.Variable(np.ones(3, dtype="float32"))
    opt = FK.Adam()
    opt.build([v])
    with pytest.raises(BackendUnavailableError, match=r"is on meta; fastadam.keras updates "
                                                      r"Keras variables on the CPU and on "
                                                      r"CUDA GPUs"):
        tv._entry(opt, 0, v, torch.empty(3, device="meta"))


def test_sumsq_reduces_device_tensors_with_one_host_copy(monkeypatch):
    """Host arrays by NumPy's dot, tensors by torch's, each in its own precision, one
    ``tolist`` (the copy to the host) for the tensors of one device."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal(1000).astype(np.float32)
    b = rng.standard_normal(17)
    ta, tb = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
    copies = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (copies.append(1),
                                                              real(self))[1])
    got = tv.sumsq([a, ta, tb, torch.zeros(0)])
    assert len(copies) == 1
    exact = [float(np.dot(a.astype(np.float64), a)), float(np.dot(b, b))]
    assert got[0] == pytest.approx(exact[0], rel=1e-5)
    assert got[1] == pytest.approx(exact[0], rel=1e-5)
    assert got[2] == pytest.approx(exact[1], rel=1e-14)
    assert got[3] == 0.0
