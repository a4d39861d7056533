"""The row-sparse steps (embedding tables) of :mod:`fastadam.functional`."""

from __future__ import annotations

from .. import _backends, _hparams


def _run_sparse(opt, backend, tables, indices, values, hp, row_states=()):
    be = _backends.resolve(backend, tables["param"])
    if not be.sparse:
        be.sparse_step(opt, {}, None, None, hp)       # raises BackendUnavailableError
    tables, indices, values = be.sparse_check(tables, indices, values, row_states)
    be.sparse_step(opt, tables, indices, values, hp)


def sparse_adam_(param, indices, values, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2, eps,
                 maximize=False, backend="auto"):
    r"""One torch.optim.SparseAdam step on the looked-up rows of a table, in place.

    For each distinct row :math:`r` of ``indices``, with :math:`g` the sum of its
    gradient rows (negated when ``maximize``):

    .. math::

        m_r &\leftarrow m_r + (1-\beta_1)(g - m_r) \\
        v_r &\leftarrow v_r + (1-\beta_2)(g^2 - v_r) \\
        \theta_r &\leftarrow \theta_r - \gamma\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
                   \frac{m_r}{\sqrt{v_r} + \epsilon}

    Other rows (parameters and moments) are not touched.  Note where SparseAdam puts
    :math:`\epsilon`: added to :math:`\sqrt{v}` before the bias correction, which is
    folded into the step size (Adam adds it after: :func:`adam_`, :func:`lazy_adam_`).

    Parameters
    ----------
    param, exp_avg, exp_avg_sq : ndarray
        The table and its moments, ``(rows, dim)``, float32 or float64.
    indices : ndarray
        1-D integer array of rows.
    values : ndarray
        ``(len(indices), dim)``, the gradient row of each lookup.
    step : int
        :math:`t`, the step count including this step (>= 1).
    lr, beta1, beta2, eps : float
        :math:`\gamma > 0`, :math:`\beta_1, \beta_2 \in [0, 1)`, :math:`\epsilon > 0`
        (torch.optim.SparseAdam's checks).
    maximize : bool, default False
    backend : {"auto", "numba", "cython", "cuda", "numpy"}, default "auto"

    Raises
    ------
    TypeError, ValueError, IndexError
        On a bad argument, before anything is written.
    """
    hp = _hparams.sparse_adam(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                              maximize=maximize)
    _run_sparse("sparse_adam", backend,
                {"param": param, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq},
                indices, values, hp)


def sparse_adagrad_(param, indices, values, sum, *, step, lr, lr_decay=0.0, eps=1e-10,
                    maximize=False, backend="auto"):
    r"""One step of torch.optim.Adagrad's sparse path on the looked-up rows, in place.

    For each distinct row :math:`r`, :math:`g` its summed (sign-flipped when
    ``maximize``) gradient:

    .. math::

        \tilde\gamma &= \gamma / (1 + (t-1)\,\eta) \\
        s_r &\leftarrow s_r + g^2 \\
        \theta_r &\leftarrow \theta_r - \tilde\gamma\, g / (\sqrt{s_r} + \epsilon)

    Parameters
    ----------
    param, sum : ndarray
        The table and its accumulator ``(rows, dim)``; fill ``sum`` with torch's
        ``initial_accumulator_value`` before the first step.
    indices, values : ndarray
        As :func:`sparse_adam_`.
    step : int
        :math:`t`, including this step.
    lr : float
    lr_decay : float, default 0
        :math:`\eta`.
    eps : float, default 1e-10
    maximize : bool, default False
    backend : {"auto", "numba", "cython", "cuda", "numpy"}, default "auto"

    Notes
    -----
    No ``weight_decay``: torch refuses it with sparse gradients.
    """
    hp = _hparams.sparse_adagrad(step=step, lr=lr, lr_decay=lr_decay, eps=eps,
                                 maximize=maximize)
    _run_sparse("sparse_adagrad", backend, {"param": param, "sum": sum}, indices, values, hp)


def sparse_sgd_(param, indices, values, *, lr, maximize=False, backend="auto"):
    r"""One SGD step on the looked-up rows, in place:
    :math:`\theta_r \leftarrow \theta_r - \gamma\, g` (:math:`g` the row's summed,
    sign-flipped when ``maximize``, gradient).

    Parameters
    ----------
    param : ndarray
        The table ``(rows, dim)``.
    indices, values : ndarray
        As :func:`sparse_adam_`.
    lr : float
    maximize : bool, default False
    backend : {"auto", "numba", "cython", "cuda", "numpy"}, default "auto"

    Notes
    -----
    No momentum or weight decay: torch refuses weight decay with sparse gradients,
    and its momentum buffer for them spans every row ever touched (fastadam.torch.SGD
    runs that case as a dense step).
    """
    hp = _hparams.sparse_sgd(lr=lr, maximize=maximize)
    _run_sparse("sparse_sgd", backend, {"param": param}, indices, values, hp)


def rowwise_adagrad_(param, indices, values, state, *, lr, eps=1e-10, weight_decay=0.0,
                     maximize=False, backend="auto"):
    r"""One row-wise Adagrad step (FBGEMM's EXACT_ROWWISE_ADAGRAD), in place.

    One state value per row: the running sum of the row's *mean* squared gradient.
    For each distinct row :math:`r` of length :math:`D`, :math:`g` its summed
    gradient:

    .. math::

        g &\leftarrow \pm g + \lambda\theta_r \\
        s_r &\leftarrow s_r + \frac{1}{D}\sum_{j} g_j^2 \\
        \theta_r &\leftarrow \theta_r - \frac{\gamma}{\sqrt{s_r} + \epsilon}\, g

    Parameters
    ----------
    param : ndarray
        The table ``(rows, dim)``.
    indices, values : ndarray
        As :func:`sparse_adam_`.
    state : ndarray
        ``(rows,)``, the table's dtype (4 bytes per row for a float32 table, where
        Adagrad keeps 4 per element).
    lr : float
    eps : float, default 1e-10
    weight_decay : float, default 0
        :math:`\lambda`, L2 added to the gradient of the looked-up rows only.
    maximize : bool, default False
    backend : {"auto", "numba", "cython", "cuda", "numpy"}, default "auto"
    """
    hp = _hparams.rowwise_adagrad(lr=lr, eps=eps, weight_decay=weight_decay,
                                  maximize=maximize)
    shape = getattr(param, "shape", None)          # NumPy or device arrays
    if shape is not None and len(shape) == 2:
        hp["dim"] = int(shape[1])
    _run_sparse("rowwise_adagrad", backend, {"param": param, "sum": state}, indices, values,
                hp, row_states=("sum",))


def lazy_adam_(param, indices, values, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2, eps,
               weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
               max_exp_avg_sq=None, maximize=False, backend="auto"):
    r"""One "lazy" Adam step: :func:`adam_`'s update on the looked-up rows only.

    For each distinct row, :math:`g` its summed gradient, exactly :func:`adam_`'s
    rule (its :math:`\epsilon` placement, weight decay, AMSGrad); the moments of
    rows not looked up do not decay and their parameters do not move (TensorFlow's
    LazyAdam; SparseAdam's lazy semantics with Adam's formula).  ``step`` is the
    table's step count.  Arguments as :func:`adam_` and :func:`sparse_adam_`.
    """
    hp = _hparams.adam(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                       amsgrad=amsgrad, maximize=maximize)
    tables = {"param": param, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    if hp["amsgrad"]:
        if max_exp_avg_sq is None:
            raise ValueError("amsgrad=True needs the max_exp_avg_sq array")
        tables["max_exp_avg_sq"] = max_exp_avg_sq
    _run_sparse("lazy_adam", backend, tables, indices, values, hp)
