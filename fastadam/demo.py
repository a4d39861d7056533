r"""``fastadam demo``: train the seed's model once per optimizer and compare them.

The model is the one the document this project grew from trains with Keras::

    Dense(100 -> 64, relu) -> Dense(64 -> 1, sigmoid), binary cross-entropy, batch 32

written here in plain NumPy (forward and backward by hand, float32), so the only
thing that changes between runs is the optimizer.  Its four arrays ``W1, b1, W2,
b2`` are handed to a fastadam optimizer as a dict; the optimizer copies them into
one flat buffer and puts views of it back into the dict, and each step the
gradients are written into ``opt.grads[name][...]`` and ``opt.step()`` updates
all 6,529 parameters with one fused kernel call.

The data need no download: 100-feature Gaussian inputs labelled by a fixed random
teacher network (a small tanh MLP) with some labels flipped, so there is structure
to learn and a ceiling below 100% accuracy.  Every optimizer starts from the same
weights and sees the same batches in the same order.

Run ``fastadam demo --help`` for the options; ``--quick`` is a short run (CI).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ._progress import Progress

DTYPE = np.float32
N_FEATURES, N_HIDDEN = 100, 64
BATCH = 32

#: name -> (fastadam class name, constructor kwargs).  Each optimizer runs with
#: torch.optim's defaults, except SGD: torch's lr=1e-3 (no momentum) lags far behind
#: in a demo's budget, so it gets Keras' default lr=0.01 (still without momentum).
OPTIMIZERS = {
    "Adam": ("Adam", {}),                    # lr=1e-3, betas=(0.9, 0.999), eps=1e-8
    "AdamW": ("AdamW", {}),                  # as Adam, decoupled weight_decay=1e-2
    "RMSprop": ("RMSprop", {}),              # lr=1e-2, alpha=0.99, eps=1e-8
    "Adagrad": ("Adagrad", {}),              # lr=1e-2, eps=1e-10
    "SGD": ("SGD", {"lr": 1e-2}),            # torch default lr=1e-3; see above
    "Adadelta": ("Adadelta", {}),            # lr=1.0, rho=0.9, eps=1e-6
    "NAdam": ("NAdam", {}),                  # lr=2e-3, betas=(0.9, 0.999), momentum_decay=4e-3
    "Adamax": ("Adamax", {}),                # lr=2e-3, betas=(0.9, 0.999), eps=1e-8
}

#: (n_train, n_val, epochs) of a full and a quick run
FULL = (40000, 10000, 10)      # the seed's fit(epochs=10, batch_size=32)
QUICK = (4000, 1000, 4)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def make_data(n: int, seed: int = 0, flip: float = 0.02):
    """Synthetic binary classification data with learnable structure.

    ``X ~ N(0, 1)`` with 100 features; the label is the sign of a fixed random
    teacher ``w2 . tanh(X W1 / 10)`` (4 hidden units, drawn from ``seed``), then
    a fraction ``flip`` of the labels is flipped (so about ``1 - flip`` accuracy
    is the ceiling).

    Returns
    -------
    X : ndarray, shape (n, 100), float32
    y : ndarray, shape (n, 1), float32 of 0/1
    """
    rng = np.random.default_rng([seed, 0])     # independent streams: data, weights, batches
    w1 = rng.standard_normal((N_FEATURES, 4))
    w2 = rng.standard_normal(4)
    X = rng.standard_normal((n, N_FEATURES))
    logit = np.tanh(X @ w1 / math.sqrt(N_FEATURES)) @ w2
    y = logit > np.median(logit)                 # balanced classes
    y ^= rng.random(n) < flip
    return X.astype(DTYPE), y.astype(DTYPE).reshape(n, 1)


# --------------------------------------------------------------------------------------
# the model: Dense(100 -> 64, relu) -> Dense(64 -> 1, sigmoid), binary cross-entropy
# --------------------------------------------------------------------------------------
def init_params(seed: int = 0) -> dict:
    """Keras' default initialisation: Glorot-uniform weights, zero biases (float32)."""
    rng = np.random.default_rng([seed, 1])

    def glorot(fan_in, fan_out):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(DTYPE)

    return {"W1": glorot(N_FEATURES, N_HIDDEN), "b1": np.zeros(N_HIDDEN, DTYPE),
            "W2": glorot(N_HIDDEN, 1), "b2": np.zeros(1, DTYPE)}


def forward(params: dict, X: np.ndarray):
    """Logits of the model and what the backward pass needs.

    Returns ``(z2, (X, z1, a1))`` with ``z1 = X W1 + b1``, ``a1 = relu(z1)``,
    ``z2 = a1 W2 + b2`` (the sigmoid is folded into the loss).
    """
    z1 = X @ params["W1"] + params["b1"]
    a1 = np.maximum(z1, z1.dtype.type(0))
    z2 = a1 @ params["W2"] + params["b2"]
    return z2, (X, z1, a1)


def bce_with_logits(z: np.ndarray, y: np.ndarray) -> float:
    r"""Mean binary cross-entropy of ``sigmoid(z)`` against ``y``, computed stably.

    :math:`-[y\log\sigma(z) + (1-y)\log(1-\sigma(z))] = \max(z,0) - yz + \log(1+e^{-|z|})`.
    """
    per = np.maximum(z, z.dtype.type(0)) - y * z + np.log1p(np.exp(-np.abs(z)))
    return float(per.mean(dtype=np.float64))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (keeps the dtype)."""
    one = z.dtype.type(1)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, one / (one + e), e / (one + e))


def loss_and_grads(params: dict, X: np.ndarray, y: np.ndarray, grads: dict | None = None):
    r"""Mean BCE loss of a batch and its gradients, written into ``grads``.

    Backward pass by hand (``B`` = batch size):

    .. math::

        &\partial z_2 = (\sigma(z_2) - y)/B, \quad \partial W_2 = a_1^T \partial z_2,
         \quad \partial b_2 = \textstyle\sum_{rows} \partial z_2 \\
        &\partial z_1 = (\partial z_2 W_2^T) \odot [z_1 > 0], \quad
         \partial W_1 = X^T \partial z_1, \quad \partial b_1 = \textstyle\sum_{rows} \partial z_1

    Parameters
    ----------
    params : dict
        ``W1, b1, W2, b2`` (e.g. ``opt.params``).
    X, y : ndarray
        A batch, shapes ``(B, 100)`` and ``(B, 1)``.
    grads : dict, optional
        Arrays of the parameters' shapes to write the gradients into in place
        (e.g. ``opt.grads``, the views of the optimizer's flat gradient buffer);
        new arrays are made when omitted.

    Returns
    -------
    loss : float
    grads : dict
    """
    z2, (X, z1, a1) = forward(params, X)
    loss = bce_with_logits(z2, y)
    if grads is None:
        grads = {k: np.empty_like(v) for k, v in params.items()}
    dz2 = (sigmoid(z2) - y) * z2.dtype.type(1.0 / X.shape[0])
    np.matmul(a1.T, dz2, out=grads["W2"])
    np.sum(dz2, axis=0, out=grads["b2"])
    dz1 = (dz2 @ params["W2"].T) * (z1 > 0)
    np.matmul(X.T, dz1, out=grads["W1"])
    np.sum(dz1, axis=0, out=grads["b1"])
    return loss, grads


def evaluate(params: dict, X: np.ndarray, y: np.ndarray):
    """``(mean BCE loss, accuracy)`` of the model on a whole set."""
    z2, _ = forward(params, X)
    acc = float(np.mean((z2 > 0) == (y > 0.5)))
    return bce_with_logits(z2, y), acc


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------
@dataclass
class Result:
    """What one optimizer's run produced."""

    name: str
    hparams: dict
    train_loss: float = math.nan
    train_acc: float = math.nan
    val_loss: float = math.nan
    val_acc: float = math.nan
    seconds: float = 0.0           # the training loop (forward, backward, steps; no evaluation)
    step_seconds: float = 0.0      # of which in opt.step()
    warmup_seconds: float = 0.0    # first-use JIT compile / numba cache load, not in `seconds`
    state_bytes_per_param: float = 0.0
    batch_losses: list = field(default_factory=list)
    epoch_train_loss: list = field(default_factory=list)
    epoch_val_loss: list = field(default_factory=list)


def fit(params: dict, opt, X: np.ndarray, y: np.ndarray, *, epochs: int, rng) -> None:
    """Plain minibatch training: ``epochs`` passes over ``(X, y)`` in batches of
    :data:`BATCH`, shuffled by ``rng``, gradients written into ``opt.grads`` and one
    ``opt.step()`` per batch (``params`` must be the optimizer's parameter views)."""
    n = X.shape[0]
    for _ in range(epochs):
        perm = rng.permutation(n)
        for s in range(0, n, BATCH):
            idx = perm[s:s + BATCH]
            loss_and_grads(params, X[idx], y[idx], opt.grads)
            opt.step()


def build_optimizer(name: str, params: dict, backend: str = "auto", lr: float | None = None):
    """The fastadam optimizer ``name`` over ``params`` with the demo's hyperparameters."""
    import fastadam
    cls_name, kwargs = OPTIMIZERS[name]
    kwargs = dict(kwargs)
    if lr is not None:
        kwargs["lr"] = lr
    return getattr(fastadam, cls_name)(params, backend=backend, **kwargs)


def train_one(name: str, data, *, epochs: int, seed: int, backend: str = "auto",
              lr: float | None = None, progress=None) -> Result:
    """Train the model from ``init_params(seed)`` with optimizer ``name``."""
    Xtr, ytr, Xva, yva = data
    # warm-up: the first step compiles the kernel (or loads it from numba's cache);
    # done on a throwaway copy so that the timed run measures training only.
    t0 = time.perf_counter()
    scratch = init_params(seed)
    w = build_optimizer(name, scratch, backend, lr)
    loss_and_grads(w.params, Xtr[:BATCH], ytr[:BATCH], w.grads)
    w.step()
    warm = time.perf_counter() - t0

    params = init_params(seed)
    opt = build_optimizer(name, params, backend, lr)   # params now holds views of its buffer
    g = opt.param_groups[0]
    res = Result(name, {k: v for k, v in g.items() if k not in ("params", "maximize")},
                 warmup_seconds=warm)
    res.epoch_train_loss.append(evaluate(params, Xtr, ytr)[0])
    res.epoch_val_loss.append(evaluate(params, Xva, yva)[0])
    order_rng = np.random.default_rng([seed, 2])         # same batches for every optimizer
    n = Xtr.shape[0]
    t_step = t_train = 0.0
    for _ in range(epochs):
        perm = order_rng.permutation(n)
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            idx = perm[s:s + BATCH]
            loss, _ = loss_and_grads(params, Xtr[idx], ytr[idx], opt.grads)
            ts = time.perf_counter()
            opt.step()
            t_step += time.perf_counter() - ts
            res.batch_losses.append(loss)
        t_train += time.perf_counter() - t0
        res.epoch_train_loss.append(evaluate(params, Xtr, ytr)[0])   # not timed
        res.epoch_val_loss.append(evaluate(params, Xva, yva)[0])
        if progress is not None:
            progress.advance()
    res.seconds = t_train
    res.step_seconds = t_step
    res.train_loss, res.train_acc = evaluate(params, Xtr, ytr)
    res.val_loss, res.val_acc = evaluate(params, Xva, yva)
    nparam = opt.flat[0].size
    state_bytes = sum(v.nbytes for st in opt.state for buf in st.values()
                      for v in buf.values() if isinstance(v, np.ndarray))
    res.state_bytes_per_param = state_bytes / nparam
    return res


# --------------------------------------------------------------------------------------
# output: progress bar, table, plot
# --------------------------------------------------------------------------------------
def format_table(results) -> str:
    """The results as a plain-text table."""
    head = ("optimizer", "lr", "train loss", "train acc", "val loss", "val acc",
            "time s", "step s", "state B/param")
    rows = [head]
    for r in results:
        rows.append((r.name, f"{r.hparams.get('lr', math.nan):g}", f"{r.train_loss:.4f}",
                     f"{r.train_acc:.3f}", f"{r.val_loss:.4f}", f"{r.val_acc:.3f}",
                     f"{r.seconds:.2f}", f"{r.step_seconds:.2f}",
                     f"{r.state_bytes_per_param:g}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows[1:]]
    return "\n".join(lines)


def _smooth(xs, k):
    xs = np.asarray(xs, dtype=np.float64)
    if k <= 1 or xs.size < k:
        return np.arange(xs.size), xs
    c = np.cumsum(np.insert(xs, 0, 0.0))
    return np.arange(k - 1, xs.size), (c[k:] - c[:-k]) / k


def _reference(results):
    """The run the difference panels subtract: Adam's, else the first one."""
    return next((r for r in results if r.name == "Adam"), results[0])


def plot(results, path: str, title: str) -> None:
    """Write the loss curves of the runs (:func:`figure`) as a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(results, title)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def figure(results, title: str):
    """The loss curves of the runs, as a matplotlib figure.

    Top row: the smoothed training loss per step and the validation loss per
    epoch (log scale).  Bottom row (two or more runs): the same curves minus
    the reference run's (Adam's when it ran), which separates the curves the
    top row bunches together: every run sees the same batches, so the batch
    noise they share cancels.  One legend, shared by all panels, below them.

    Parameters
    ----------
    results : list of Result
        The runs, in the legend's order.
    title : str
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
        Open (pyplot's): close it when done.
    """
    import matplotlib
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    diff = len(results) > 1
    fig, axes = plt.subplots(2 if diff else 1, 2, figsize=(12, 8.4 if diff else 4.8),
                             sharex="col", squeeze=False)
    epochs = max(1, len(results[0].epoch_val_loss) - 1)
    steps_per_epoch = max(1, len(results[0].batch_losses) // epochs)
    window = max(1, steps_per_epoch // 5)
    ref = _reference(results)
    _, ref_train = _smooth(ref.batch_losses, window)
    ref_val = np.asarray(ref.epoch_val_loss, dtype=np.float64)
    styles = ("-", "--", "-.", ":")
    for i, r in enumerate(results):
        style = dict(label=r.name, color=f"C{i % 10}", ls=styles[i % len(styles)],
                     lw=2.0 if r is ref else 1.3)
        x, y = _smooth(r.batch_losses, window)
        ep = np.arange(len(r.epoch_val_loss))
        val = np.asarray(r.epoch_val_loss, dtype=np.float64)
        axes[0, 0].plot((x + 1) / steps_per_epoch, y, **style)
        axes[0, 1].plot(ep, val, marker="o", ms=3.5, **style)
        if diff:
            axes[1, 0].plot((x + 1) / steps_per_epoch, y - ref_train, **style)
            axes[1, 1].plot(ep, val - ref_val, marker="o", ms=3.5, **style)
    axes[0, 0].set(ylabel=f"training loss (batch, mean of {window})", title="training loss")
    axes[0, 1].set(ylabel="validation loss", title="validation loss")
    for ax in axes[0]:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    if diff:
        axes[1, 0].set(ylabel=f"training loss - {ref.name}'s (symlog)",
                       title=f"training loss minus {ref.name}'s (below 0: lower loss)")
        axes[1, 1].set(ylabel=f"validation loss - {ref.name}'s (symlog)",
                       title=f"validation loss minus {ref.name}'s")
        for ax in axes[1]:
            # differences span decades (AdamW ~1e-4 from Adam, plain SGD ~0.3): a
            # symmetric log scale, linear below the closest curve's typical gap
            gaps = [np.median(np.abs(y[np.isfinite(y) & (y != 0)]))
                    for y in (ln.get_ydata() for ln in ax.get_lines())
                    if np.any(np.isfinite(y) & (y != 0))]
            if gaps:
                lin = max(min(gaps), 1e-6)
                ax.set_yscale("symlog", linthresh=lin, linscale=1.0)
                # no labels crowding 0 inside the linear band
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
                    lambda v, _, lin=lin: "" if 0 < abs(v) < 1.5 * lin else f"{v:g}"))
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.set_xlim(0, epochs)
    axes[-1, 1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=9,
               frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 if diff else 0.09, 1, 1))
    return fig


# --------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    """Options of ``fastadam demo``."""
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: {QUICK[0]} training samples, {QUICK[2]} epochs "
                             "(well under 30 s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs per optimizer (default {FULL[2]}; {QUICK[2]} with --quick)")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"training samples (default {FULL[0]}; {QUICK[0]} with --quick); "
                             "the validation set is a quarter of that, at least 500")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and batches")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                        help="comma-separated subset of: " + ", ".join(OPTIMIZERS))
    parser.add_argument("--lr", type=float, default=None,
                        help="use this learning rate for every optimizer instead of its default")
    parser.add_argument("--backend", default="auto",
                        help="fastadam backend: auto, numba, cython or numpy (the reference)")
    parser.add_argument("--out", default=".", metavar="DIR",
                        help="directory for fastadam-demo.png and fastadam-demo.json "
                             "(default: the current directory)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")


def _parse_optimizers(spec: str) -> list:
    lookup = {k.lower(): k for k in OPTIMIZERS}
    names = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() not in lookup:
            raise ValueError(f"unknown optimizer {part!r}; choose from {', '.join(OPTIMIZERS)}")
        if lookup[part.lower()] not in names:
            names.append(lookup[part.lower()])
    if not names:
        raise ValueError("--optimizers selects nothing")
    return names


def run(args) -> int:
    """Run the demo; returns the process exit code."""
    try:
        names = _parse_optimizers(args.optimizers)
    except ValueError as e:
        print(f"fastadam demo: {e}", file=sys.stderr)
        return 2
    n_train, n_val, epochs = QUICK if args.quick else FULL
    if args.samples is not None:
        n_train, n_val = args.samples, max(500, args.samples // 4)
    if args.epochs is not None:
        epochs = args.epochs
    if epochs < 1 or n_train < BATCH:
        print(f"fastadam demo: need --epochs >= 1 and --samples >= {BATCH}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        print(f"fastadam demo: cannot create --out {args.out!r}: {e}", file=sys.stderr)
        return 2

    import fastadam
    X, y = make_data(n_train + n_val, seed=args.seed)
    data = (X[:n_train], y[:n_train], X[n_train:], y[n_train:])
    nparam = sum(v.size for v in init_params(args.seed).values())
    print(f"fastadam {fastadam.__version__} demo: Dense(100->64, relu) -> Dense(64->1, sigmoid), "
          f"binary cross-entropy, batch {BATCH}, float32, {nparam} parameters")
    print(f"data: {n_train} training / {n_val} validation samples, 100 features "
          f"(synthetic, seed {args.seed}); {epochs} epochs; backend {args.backend!r}")

    progress = Progress(len(names) * epochs)
    results = []
    t_all = time.perf_counter()
    try:
        for name in names:
            progress.set_label(name)
            r = train_one(name, data, epochs=epochs, seed=args.seed, backend=args.backend,
                          lr=args.lr, progress=progress)
            results.append(r)
            progress.log(f"{name:<9} val loss {r.val_loss:.4f}  val acc {r.val_acc:.3f}  "
                         f"({r.seconds:.2f} s)")
    except (ValueError, TypeError, RuntimeError) as e:   # e.g. an unavailable backend
        progress.close()
        print(f"fastadam demo: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    progress.close()
    total = time.perf_counter() - t_all

    print()
    print(format_table(results))
    print()
    print("time s: the training loop (forward, backward, steps; not the evaluation); "
          "step s: of which in opt.step().")
    print(f"First-use kernel compilation / cache loading, not in the table: "
          f"{sum(r.warmup_seconds for r in results):.2f} s. Total {total:.1f} s.")
    if "SGD" in names and args.lr is None:
        print("SGD runs with lr=0.01 (Keras' default; torch.optim's 1e-3 lags far behind here).")

    summary = [{k: v for k, v in vars(r).items() if k != "batch_losses"} for r in results]
    json_path = os.path.join(args.out, "fastadam-demo.json")
    with open(json_path, "w") as f:
        json.dump({"n_train": n_train, "n_val": n_val, "epochs": epochs, "seed": args.seed,
                   "backend": args.backend, "results": summary}, f, default=float)
    print(f"results (every figure above, per-epoch losses) written to {json_path}")
    if not args.no_plot:
        path = os.path.join(args.out, "fastadam-demo.png")
        try:
            plot(results, path, f"seed's model, {n_train} samples, {epochs} epochs, batch {BATCH}")
        except ImportError:
            print("matplotlib is not installed, so no plot was written; "
                  "install it with: pip install \"fastadam[demo]\" (or pip install matplotlib)")
        else:
            print(f"loss curves written to {path}")
    return 0
