"""The reduced-precision section of ``fastadam bench``: measurements and their rooflines.

On one flat buffer of ``n`` float32-sized parameters (default 8M), every
contender interleaved in one process (see :func:`fastadam.bench.timing.interleave`):

* ``roofline ...``: the fastest loop moving exactly a float32 Adam step's bytes
  (28 B/param; :mod:`fastadam.bench.roofline`, every form it has, the fastest taken);
* ``adam fp32 state``: :func:`fastadam.functional.adam_` (the numba kernel);
* ``adam bf16 state`` (20 B/param) and ``adam int8 state`` (16.06 B/param):
  the same call with ``state_dtype=...`` from a realistic (not all-zero) state;
* ``bf16 params, fp32 master`` (28 B/param) and ``bf16 params, bf16 state``
  (20 B/param): bfloat16 parameters and gradients with float32 master weights
  (``master_param=``, :mod:`fastadam.lowp.master`);
* ``amp step``: ``fastadam.AdamW(max_grad_norm=1.0).step(grad_scale=1024)`` on
  one flat buffer: the fused first pass (unscale, inf/nan check, global norm),
  then the update with the factor folded in (32 B/param);
* ``roofline read ...``: a read-only pass over the gradient (the fastest form),
  so that the AMP step's own roofline is that pass plus the fastest Adam
  roofline loop;
* ``roofline bf16 state ...`` / ``roofline int8 state ...``: the fastest loop
  moving a reduced-precision step's bytes (float32 ``p``, ``g`` and moments of
  2 / 1 bytes; :func:`fastadam.bench.roofline.state_loops`), each state format's own
  roofline: how far a kernel is from moving its bytes, and the speed-up over
  the float32 roofline that no kernel of that format can pass on this machine.

What is printed is measured, each figure beside the limit it is measured
against (the float32 roofline, the contender's own roofline); the project's
own goals for these ratios live in its design notes, not in this user-facing
table.

See Also
--------
fastadam.lowp : the reduced-precision state formats measured here.
fastadam.bench.report : prints this section (:func:`format_section`) after the others.
"""

from __future__ import annotations

import numpy as np

from .. import _alloc
from .contenders import _roofline_fns
from .timing import _fmt_time, _label

HP = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
#: contender -> (bytes moved per parameter, the contender's own roofline: a prefix
#: of the roofline contenders, or None)
ROWS = {
    "adam fp32 state": (28, "roofline parallel"),
    "adam bf16 state": (20, "roofline bf16 state"),
    "adam int8 state": (16 + 16 / 256, "roofline int8 state"),
    "bf16 params, fp32 master": (28, None),
    "bf16 params, bf16 state": (20, None),
}
#: state format -> bytes per moment element, for the state-format rooflines
_STATE_ITEMSIZE = {"bf16": 2, "int8": 1}


def contenders(n: int) -> dict:
    """``name -> fn`` of the section, for ``n`` parameters (``n`` >= 1)."""
    import fastadam
    from .. import functional as F
    from .. import lowp             # fastadam.lowp, the state formats (not this module)
    from .roofline import read_loops, state_loops, state_words

    f32 = np.float32
    rng = np.random.default_rng(0)
    p0 = _alloc.copy(rng.standard_normal(n, dtype=f32))
    g0 = _alloc.copy(rng.standard_normal(n, dtype=f32) * f32(1e-2))
    out = {}
    roofs = _roofline_fns("adam", n, f32)
    out.update((name, fn) for name, fn in roofs.items() if "parallel" in name)
    step = [10]

    def hp():
        step[0] += 1
        return dict(step=step[0], **HP)

    p, g = _alloc.copy(p0), _alloc.copy(g0)        # aligned, as the façades' buffers
    m, v = _alloc.zeros(n, f32), _alloc.zeros(n, f32)
    out["adam fp32 state"] = lambda: F.adam_(p, g, m, v, **hp())

    for sd, name in (("bfloat16", "adam bf16 state"), ("int8", "adam int8 state")):
        pp, st = _alloc.copy(p0), lowp.new_state(sd, n)
        kw = dict(exp_avg_scale=st.get("exp_avg_scale"),
                  exp_avg_sq_scale=st.get("exp_avg_sq_scale"), state_dtype=sd)
        F.adam_(pp, g0, st["exp_avg"], st["exp_avg_sq"], **kw, **hp())   # a realistic state
        out[name] = (lambda pp=pp, st=st, kw=kw:
                     F.adam_(pp, g0, st["exp_avg"], st["exp_avg_sq"], **kw, **hp()))

    try:
        import ml_dtypes
        bf16 = np.dtype(ml_dtypes.bfloat16)
    except ImportError:     # the master-weight rows need NumPy bfloat16 arrays
        bf16 = None
    if bf16 is not None:
        for sd, name in (("float32", "bf16 params, fp32 master"),
                         ("bfloat16", "bf16 params, bf16 state")):
            lo = _alloc.copy(p0.astype(bf16))
            w = _alloc.copy(lo.astype(f32))
            gl = _alloc.copy(g0.astype(bf16))
            st = lowp.new_state(sd, n)
            out[name] = (lambda lo=lo, w=w, gl=gl, st=st, sd=sd:
                         F.adam_(lo, gl, st["exp_avg"], st["exp_avg_sq"], master_param=w,
                                 state_dtype=sd, **hp()))

    opt = fastadam.AdamW([p0.copy()], lr=1e-3, max_grad_norm=1.0)
    opt.grads[0][...] = g0 * f32(1024)
    out["amp step"] = lambda: opt.step(grad_scale=1024.0)
    out.update(("roofline " + k, f) for k, f in read_loops(_alloc.copy(g0)).items())
    for fmt, size in _STATE_ITEMSIZE.items():
        arrays = (_alloc.copy(p0), _alloc.copy(g0), state_words(n, size), state_words(n, size))
        out.update((f"roofline {fmt} state {k}", f)
                   for k, f in state_loops(*arrays, size).items())
    return out


def summarize(n: int, medians: dict) -> dict:
    """Ratios of the section from the medians of :func:`contenders`' timings."""
    roof = min(t for k, t in medians.items() if k.startswith("roofline ")
               and not k.startswith(("roofline read", "roofline bf16", "roofline int8")))
    # the AMP step reads g (first pass), then makes an Adam step: the fastest of each
    roof_amp = roof + min(t for k, t in medians.items() if k.startswith("roofline read"))
    rows = []
    for name, (nbytes, own) in ROWS.items():
        if name not in medians:
            continue
        t = medians[name]
        own_s = (roof if own == "roofline parallel" else
                 min((v for k, v in medians.items() if k.startswith(own + " ")), default=None)
                 if own else None)
        rows.append(dict(contender=name, bytes_per_param=nbytes, median_s=t,
                         vs_fp32_roofline=roof / t, bytes_ratio=28 / nbytes,
                         own_roofline_s=own_s,
                         own_vs_fp32_roofline=roof / own_s if own_s else None,
                         pct_own_roofline=100.0 * own_s / t if own_s else None))
    return dict(size=n, roofline_s=roof, rows=rows, amp_s=medians["amp step"],
                roofline_amp_s=roof_amp, amp_pct=100.0 * roof_amp / medians["amp step"])


def format_section(res: dict) -> str:
    """The section as text: each contender's median and its ratios to the rooflines.

    Parameters
    ----------
    res : dict
        What :func:`summarize` returns.

    Returns
    -------
    str
        The table, one line per contender and one for the AMP step.
    """
    lines = [f"Reduced precision and AMP, one buffer of {_label(res['size'])} params, against "
             f"the float32 Adam roofline ({_fmt_time(res['roofline_s']).strip()}, 28 B/param)",
             "(own roofline: the fastest loop moving the contender's bytes; its speed-up is "
             "the most any kernel of that format can reach here)",
             f"{'contender':<28} {'bytes/param':>11} {'median':>11} {'vs roofline':>11} "
             f"{'bytes ratio':>11} {'own roofline':>12} {'% of own':>8}"]
    for r in res["rows"]:
        own = (f"{r['own_vs_fp32_roofline']:11.2f}x {r['pct_own_roofline']:7.1f}%"
               if r.get("own_roofline_s") else f"{'-':>12} {'-':>8}")
        lines.append(f"{r['contender']:<28} {r['bytes_per_param']:>11.2f} "
                     f"{_fmt_time(r['median_s'])} {r['vs_fp32_roofline']:10.2f}x "
                     f"{r['bytes_ratio']:10.2f}x {own}")
    lines.append(f"{'amp step':<28} {32:>11.2f} {_fmt_time(res['amp_s'])} "
                 f"{res['amp_pct']:9.1f}% of its roofline ({_fmt_time(res['roofline_amp_s']).strip()}"
                 ": the fastest read of g plus the fastest Adam roofline loop)")
    return "\n".join(lines)
