r"""The Keras section of ``fastadam bench`` (``fastadam bench --keras``).

Keras 3 on its torch backend (``KERAS_BACKEND=torch`` is set here unless Keras
was imported already, on any backend: then the section refuses to run).  Every
contender runs interleaved in one process (:func:`fastadam.bench.timing.interleave`),
and the table gives the time of one ``fit()`` step (an epoch of
:data:`BATCHES` batches, ``shuffle=False``, divided by the batch count):

* ``fit()``: for each optimizer, ``keras.optimizers.X`` against its
  ``fastadam.keras.X`` twin, on the seed's model (``Dense(100 -> 64, relu) ->
  Dense(64 -> 1, sigmoid)``, batch 32, binary cross-entropy) and on an
  ~8M-parameter MLP (``1024 -> 2048 -> 2048 -> 1024``, relu, batch 64, mean
  squared error), each model built from the same initial weights; and
  ``keras SGD`` as the floor (forward and backward with the cheapest update);
* ``apply()``: the optimizer step alone (Adam, float32, the gradients of one
  batch) on the MLP and on a deep narrow MLP (32 ``Dense(48)`` layers, 64
  small variables): Keras' Adam, and fastadam's with its layouts forced
  (:data:`fastadam.keras._torch_views.PACK_MAX`): one kernel call per variable
  on the variables' own storage, the default (variables of <= 4K elements
  packed into one flat buffer, one call), and everything in one flat buffer
  (one call, every gradient copied in: Keras hands new gradient tensors each
  step).

The printed speed-ups are measurements; the keras SGD ``fit()`` step, the cheapest
update, is printed as the floor any optimizer's step stands on.

See Also
--------
fastadam.keras : the optimizers measured here.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import numpy as np

from .._progress import Progress
from .report import machine_info
from .timing import _fmt_time, interleave

OPTIMIZERS = ("Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "Nadam", "Adamax")
QUICK_OPTIMIZERS = ("Adam",)
#: name -> (layer widths, batch, loss, batches per timed epoch)
MODELS = {"seed": ((100, 64, 1), 32, "binary_crossentropy", 50),
          "mlp 8M": ((1024, 2048, 2048, 1024), 64, "mse", 6)}
DEEP = tuple([48] * 33)


def _keras():
    """Keras on its torch backend, or None (the reason printed)."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as e:
        print(f"fastadam bench --keras: Keras is not importable ({e})", file=sys.stderr)
        return None
    if keras.backend.backend() != "torch":
        print(f"fastadam bench --keras: Keras runs on {keras.backend.backend()!r}; "
              "run with KERAS_BACKEND=torch", file=sys.stderr)
        return None
    return keras


def _model(keras, widths, weights=None):
    acts = ["relu"] * (len(widths) - 2) + ["sigmoid" if widths[-1] == 1 else None]
    layers = [keras.Input((widths[0],))]
    layers += [keras.layers.Dense(w, activation=a) for w, a in zip(widths[1:], acts)]
    m = keras.Sequential(layers)
    if weights is not None:
        m.set_weights(weights)
    return m


def _data(widths, batch, batches, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch * batches, widths[0]), dtype=np.float32)
    y = (rng.random((batch * batches, widths[-1])) > 0.5).astype(np.float32)
    return x, y


def fit_contenders(keras, model, names, batches=None, only=None) -> dict:
    """``label -> fn`` (one epoch of ``fit()``, ``batches`` steps) for ``model`` and
    each optimizer of ``names``: ``"keras X"``, ``"fastadam X"`` and ``"keras SGD"``
    (or only the contender labelled ``only``)."""
    import fastadam.keras as FK
    widths, batch, loss, nb = MODELS[model]
    nb = batches or nb
    keras.utils.set_random_seed(0)
    w0 = _model(keras, widths).get_weights()
    x, y = _data(widths, batch, nb)
    out = {}
    pairs = [(f"keras {n}", getattr(keras.optimizers, n)) for n in names]
    pairs += [(f"fastadam {n}", getattr(FK, n)) for n in names]
    if "SGD" not in names:
        pairs.append(("keras SGD", keras.optimizers.SGD))
    if only is not None:
        pairs = [(label, cls) for label, cls in pairs if label == only]
    for label, cls in pairs:
        m = _model(keras, widths, w0)
        m.compile(loss=loss, optimizer=cls())
        m.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)   # build, warm
        out[label] = (lambda m=m: m.fit(x, y, batch_size=batch, epochs=1, verbose=0,
                                        shuffle=False))
    return out


def apply_contenders(keras, widths, batch=64) -> dict:
    """``label -> fn`` (one Adam ``apply()``) with Keras' Adam and fastadam's layouts."""
    import torch

    import fastadam.keras as FK
    from fastadam.keras import _torch_views
    keras.utils.set_random_seed(0)
    w0 = _model(keras, widths).get_weights()
    x, y = _data(widths, batch, 1)
    out = {}
    layouts = (("keras Adam", None), ("fastadam, a call per variable", 0),
               ("fastadam, small ones packed", _torch_views.PACK_MAX),
               ("fastadam, one flat buffer", 1 << 62))
    for label, pack_max in layouts:
        m = _model(keras, widths, w0)
        opt = keras.optimizers.Adam() if pack_max is None else FK.Adam()
        m.zero_grad()
        loss = keras.losses.MeanSquaredError()(torch.from_numpy(y), m(torch.from_numpy(x)))
        loss.backward()
        grads = [v.value.grad.clone() for v in m.trainable_variables]
        tv = m.trainable_variables

        def step(opt=opt, grads=grads, tv=tv, pack_max=pack_max):
            old = _torch_views.PACK_MAX
            if pack_max is not None:
                _torch_views.PACK_MAX = pack_max
            try:
                with torch.no_grad():
                    opt.apply(grads, tv)
            finally:
                _torch_views.PACK_MAX = old
        out[label] = step
    return out


def _interleave_epochs(contenders, rounds, progress, stat):
    """``stat`` of the seconds per call of each ``name -> fn``: one call per round each,
    the order rotating between rounds, after one untimed call each (an epoch of
    ``fit()`` is long enough to time alone; :func:`~fastadam.bench.timing.interleave`
    would spend three calls on calibration)."""
    import time
    names = list(contenders)
    for fn in contenders.values():
        fn()
    times = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            contenders[n]()
            times[n].append(time.perf_counter() - t0)
        progress.tick(f"round {r + 1}/{rounds}")
    return {n: stat(ts) for n, ts in times.items()}


def _rows(section, model, per_call, steps):
    return [{"section": section, "model": model, "contender": k, "time": t / steps}
            for k, t in per_call.items()]


def run(args) -> int:
    keras = _keras()
    if keras is None:
        return 2
    quick = args.quick
    rounds = args.rounds or (3 if quick else 5)
    stat = {"median": statistics.median, "min": min}[args.stat]
    names = QUICK_OPTIMIZERS if quick else OPTIMIZERS
    models = list(MODELS)
    apply_models = {"mlp 8M": MODELS["mlp 8M"][0], "deep 64 variables": DEEP}
    steps = rounds * (len(models) + len(apply_models))
    progress = Progress(steps, enabled=not args.no_progress)
    rows = []
    try:
        for model in models:
            progress.tick(f"fit() {model}: preparing")
            nb = 2 if quick and model == "mlp 8M" else (10 if quick else None)
            cont = fit_contenders(keras, model, names, nb)
            steps_per_call = nb or MODELS[model][3]
            rows += _rows("fit", model, _interleave_epochs(cont, rounds, progress, stat),
                          steps_per_call)
            del cont
        for model, widths in apply_models.items():
            progress.tick(f"apply() {model}: preparing")
            cont = apply_contenders(keras, widths)
            rows += _rows("apply", model, interleave(cont, rounds, 0.2, progress, stat), 1)
            del cont
    finally:
        progress.close()
    print(format_report(rows, args.stat, rounds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "keras": keras.__version__,
                       "stat": args.stat, "rounds": rounds, "rows": rows}, f, indent=2)
    return 0


def speedups(rows) -> list:
    """(model, optimizer, keras time, fastadam time, speed-up) of the fit() rows."""
    t = {(r["model"], r["contender"]): r["time"] for r in rows if r["section"] == "fit"}
    out = []
    for (model, label), tk in t.items():
        if label.startswith("keras ") and (model, "fastadam " + label[6:]) in t:
            tf = t[(model, "fastadam " + label[6:])]
            out.append((model, label[6:], tk, tf, tk / tf))
    return out


def format_report(rows, stat, rounds) -> str:
    lines = [f"Keras {stat} over {rounds} interleaved rounds (torch backend, CPU)", "",
             "fit(): time per step", f"{'model':10s} {'optimizer':10s} {'keras':>12s} "
             f"{'fastadam':>12s} {'speed-up':>9s}"]
    for model, name, tk, tf, s in speedups(rows):
        lines.append(f"{model:10s} {name:10s} {_fmt_time(tk)} {_fmt_time(tf)} {s:8.2f}x")
    floor = [r for r in rows if r["section"] == "fit" and r["contender"] == "keras SGD"]
    for r in floor:
        lines.append(f"{r['model']:10s} (keras SGD, the floor: {_fmt_time(r['time']).strip()})")
    lines += ["", "apply(): the Adam step alone"]
    for r in rows:
        if r["section"] == "apply":
            lines.append(f"{r['model']:18s} {r['contender']:30s} {_fmt_time(r['time'])}")
    return "\n".join(lines)
