"""fastadam.keras against Keras 3's own optimizers (run on the torch backend).

Skipped when torch or keras is missing.  ``KERAS_BACKEND`` is set to ``torch``
before keras is imported (keras reads it once, at import).

Tolerances, over 25 steps of every case of ``KERAS_CASES``:

* float64 variables with ``keras.config.floatx() == "float64"`` (Keras' learning
  rate variable and its scalar arithmetic in float64): 1e-9 relative.  Not
  tighter because Keras computes the ``clipnorm``/``global_clipnorm`` scale in
  float32 even for float64 gradients (``ops.maximum(x, python_float)`` returns
  float32): the clip cases differ by ~1e-10; all others by <= 1e-15.
* float64 variables with Keras' default ``floatx == "float32"``: 1e-6 relative,
  because Keras then keeps lr and ``1 - weight_decay * lr`` in float32
  (weight-decay cases differ by ~3e-7, others by <= 2e-8).
* float32: rtol 1e-4 (element-wise, atol 1e-6).
"""

from __future__ import annotations


import numpy as np
import pytest
import skips

keras = skips.keras_on_torch()

import torch  # noqa: E402

import fastadam  # noqa: E402
import fastadam.keras as FK  # noqa: E402
from test_keras import KERAS_CASES, case_id, max_rel, problem  # noqa: E402

STEPS = 25

# Keras' own variables trigger NumPy 2's __array__(copy=...) deprecation warning.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture
def floatx():
    """Set keras.config.floatx for one test, restoring it afterwards."""
    old = keras.config.floatx()
    yield keras.config.set_floatx
    keras.config.set_floatx(old)


def keras_kwargs(kw):
    """Keras insists on float learning rates / momentum (ints are refused)."""
    return {k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
            for k, v in kw.items()}


def run_pair(name, kw, dtype, steps=STEPS, flat=False, backend="auto"):
    """The same problem through Keras and fastadam.keras; returns (ours, theirs)."""
    init, grads = problem(dtype, steps)
    kvars = [keras.Variable(a.copy(), dtype=np.dtype(dtype).name) for a in init]
    kopt = getattr(keras.optimizers, name)(**keras_kwargs(kw))
    opt = getattr(FK, name)(backend=backend, **kw)
    if flat:
        fp = fastadam.FlatParams([a.copy() for a in init])
        ours = fp.params
    else:
        ours = [a.copy() for a in init]
    for gs in grads:
        kopt.apply_gradients([(torch.from_numpy(g.copy()), v) for g, v in zip(gs, kvars)])
        if flat:
            fp.set_grads(gs)
            opt.apply_gradients(zip(fp.grads, ours))
        else:
            opt.apply_gradients(zip(gs, ours))
    assert opt.iterations == int(kopt.iterations.numpy()) == steps
    return [np.array(a) for a in ours], [v.numpy() for v in kvars]


@pytest.mark.parametrize("case", KERAS_CASES, ids=case_id)
def test_float64_floatx64(case, floatx):
    floatx("float64")
    ours, theirs = run_pair(*case, np.float64)
    assert max_rel(ours, theirs) < 1e-9


@pytest.mark.parametrize("case", KERAS_CASES, ids=case_id)
def test_float64_default_floatx(case):
    ours, theirs = run_pair(*case, np.float64)
    assert max_rel(ours, theirs) < 1e-6


@pytest.mark.parametrize("case", KERAS_CASES, ids=case_id)
def test_float32(case):
    ours, theirs = run_pair(*case, np.float32)
    assert all(a.dtype == np.float32 for a in ours)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta",
                                  "Nadam", "Adamax"])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_flat_path_and_numpy_backend(name, backend, floatx):
    floatx("float64")
    kw = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    ours, theirs = run_pair(name, kw, np.float64, flat=True, backend=backend)
    assert max_rel(ours, theirs) < 1e-12


@pytest.mark.parametrize("name", ["Adam", "SGD", "Nadam", "RMSprop"])
def test_keras_schedule_object(name, floatx):
    """A keras LearningRateSchedule is called with the iteration count, as Keras does."""
    floatx("float64")
    sched = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=5, decay_rate=0.5)
    ours, theirs = run_pair(name, {"learning_rate": sched, "weight_decay": 0.1}, np.float64)
    assert max_rel(ours, theirs) < 1e-12
    ours, theirs = run_pair(name, {"learning_rate": sched}, np.float32)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_constructor_signatures_match_keras():
    """Same parameter names, order and defaults as Keras (plus decay/backend, keyword only)."""
    import inspect
    for name in ["Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "Nadam", "Adamax"]:
        ks = inspect.signature(getattr(keras.optimizers, name).__init__).parameters
        fs = inspect.signature(getattr(FK, name).__init__).parameters
        kparams = [(p.name, p.default) for p in ks.values() if p.kind != p.VAR_KEYWORD]
        fparams = [(p.name, p.default) for p in fs.values() if p.kind != p.KEYWORD_ONLY]
        assert fparams == kparams, name
