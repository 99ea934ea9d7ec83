"""High-precision references (mpmath, 50 significant digits) for the tests at
the extremes: log-weights thousands of nats apart, Renyi orders near 1,
signals far below the bounds they are the difference of.

Each function takes the log-weights of one example as Python floats (the
values the op was given, after rounding to its dtype) and computes in
mpmath, whose exponent range is unbounded: exp(-1e4) is a number there, not
an underflow. Inputs may be given as (values, counts) to stand for a slice
of sum(counts) samples holding few distinct values, so a K = 10^4 reference
costs a handful of exponentials.
"""

import mpmath

DIGITS = 50


def _ctx():
    ctx = mpmath.mp.clone()
    ctx.dps = DIGITS
    return ctx


def _grouped(values, counts):
    if counts is None:
        counts = [1] * len(values)
    return [float(v) for v in values], [int(c) for c in counts]


def _lse(ctx, xs, ns):
    m = max(xs)
    return m + ctx.log(ctx.fsum(n * ctx.exp(x - m) for x, n in zip(xs, ns)))


def renyi(values, alpha, counts=None):
    """The Renyi bound (1/(1-alpha)) log((1/K) sum_k w_k^(1-alpha)) and the
    normalised weights softmax((1-alpha) log w) of each distinct value, as
    mpf: (bound, [weight of values[i]]). alpha = 1: the ELBO mean(log w),
    weights 1/K."""
    ctx = _ctx()
    xs, ns = _grouped(values, counts)
    beta = 1 - ctx.mpf(alpha)
    K = sum(ns)
    if beta == 0:  # the ELBO, the mean of the log-weights
        return ctx.fsum(n * ctx.mpf(x) for x, n in zip(xs, ns)) / K, [ctx.mpf(1) / K] * len(xs)
    ys = [beta * ctx.mpf(x) for x in xs]
    lse = _lse(ctx, ys, ns)
    bound = (lse - ctx.log(K)) / beta
    return bound, [ctx.exp(y - lse) for y in ys]


def vimco(values):
    """VIMCO on one example (Mnih & Rezende 2016): the bound
    L = log((1/K) sum_k w_k), each sample's normalised weight w_j and its
    learning signal L - L_-j, where L_-j replaces log w_j by the mean of the
    other log-weights, and the geometric mean f_j of the others' weights over
    the leave-one-out sum T - e_j + f_j (what the signal's sensitivity to
    that mean is: L_-j is the log of that sum, so a relative error in f_j
    moves the signal by that share of it; at most 1, and 1/2 for the argmax
    of K = 2 whatever the gap): the bound, then lists of mpf. Finite inputs
    only.

    The signal is L - L_-j = log(T) - log(T - e_j + f_j), T = sum_k w_k, taken
    as -log1p((f_j - e_j) / T) where that is small (the difference of the two
    logs would cancel: a signal of 1e-203 next to bounds of order 1 needs
    more than 50 digits that way), and from the others' sum summed on its own
    where it is not (T - e_j cancels when w_j dominates)."""
    ctx = _ctx()
    xs = [ctx.mpf(float(v)) for v in values]
    K = len(xs)
    m = max(xs)
    terms = [ctx.exp(x - m) for x in xs]
    total = ctx.fsum(terms)  # T / exp(m)
    lse = m + ctx.log(total)
    fsum = ctx.fsum(xs)
    weights, signals, fs = [], [], []
    for j in range(K):
        f = ctx.exp((fsum - xs[j]) / (K - 1) - m)
        e = terms[j]
        weights.append(e / total)
        # T - e_j, summed on its own where it would cancel (w_j dominates)
        others = total - e if e < total / 2 else ctx.fsum(terms[:j] + terms[j + 1 :])
        fs.append(f / (others + f))
        if abs(f - e) < total / 2:
            signals.append(-ctx.log1p((f - e) / total))
        else:
            signals.append(ctx.log(total) - ctx.log(others + f))
    return lse - ctx.log(K), weights, signals, fs


def rel_err(actual, exact, floor=0.0):
    """|actual - exact| / max(|exact|, floor), in float (inf where actual is
    not finite and exact is)."""
    exact = mpmath.mpf(exact)
    a = float(actual)
    if a != a or a in (float("inf"), float("-inf")):
        return float("inf")
    den = max(abs(exact), mpmath.mpf(floor))
    if den == 0:
        return 0.0 if a == 0 else float("inf")
    return float(abs(mpmath.mpf(a) - exact) / den)
