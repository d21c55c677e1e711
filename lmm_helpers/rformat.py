"""Numbers printed the way R prints them, so that a summary can be held beside lme4's line by line.

R's ``format(x, digits = d)`` gives every element of a vector the same number of decimals: the fewest that show
each element to ``d`` significant digits (trailing zeros dropped), and switches the whole vector to scientific
notation when that is narrower. ``printCoefmat`` and ``format.pval`` build on it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["abbreviate", "format_named", "format_num", "format_pval", "format_table", "zapsmall"]


def _digits_of(x: float, digits: int) -> tuple[int, int]:
    """Return (exponent, significant digits needed) of ``x`` shown to ``digits`` significant digits."""
    if x == 0 or not math.isfinite(x):
        return 0, 1
    kp = math.floor(math.log10(abs(x)))
    alpha = round(abs(x) / 10.0**kp * 10 ** (digits - 1))
    if alpha >= 10**digits:  # rounding carried into a new leading digit (9.9996 -> 10.00)
        kp, alpha = kp + 1, alpha // 10
    sig = digits
    while sig > 1 and alpha % 10 == 0:
        alpha //= 10
        sig -= 1
    return kp, sig


def format_num(values: Sequence[float], digits: int = 4) -> list[str]:
    """Format a vector like R's ``format(values, digits = digits)``: common decimals, common width.

    Parameters
    ----------
    values : sequence of float
        The numbers to format together.
    digits : int
        Significant digits the most demanding element is shown to.

    Returns
    -------
    list of str
        Right-justified strings of equal width.
    """
    x = [float(v) + 0.0 for v in values]  # + 0.0 turns -0.0 (a zapped -1e-16) into 0.0, which R prints unsigned
    if not x:
        return []
    info = [_digits_of(v, digits) for v in x]
    neg = any(v < 0 for v in x)
    rgt = max(max(0, sig - kp - 1) for kp, sig in info)
    sleft = max((v < 0) + (kp + 1 if kp >= 0 else 1) for v, (kp, _) in zip(x, info))  # sign and integer part
    fixed_width = sleft + (rgt + 1 if rgt else 0)
    mxsig = max(sig for _, sig in info)
    big_exp = any(abs(kp) >= 100 for kp, _ in info)
    sci_width = neg + (mxsig + 1 if mxsig > 1 else mxsig) + 4 + big_exp
    if fixed_width <= sci_width:
        out = [f"{v:.{rgt}f}" for v in x]
    else:
        out = [f"{v:.{mxsig - 1}e}" for v in x]
    width = max(len(s) for s in out)
    return [s.rjust(width) for s in out]


def format_pval(pvalues: Sequence[float], digits: int = 3) -> list[str]:
    """Format p-values as R's ``format.pval`` (R 4.2), which ``printCoefmat`` calls.

    Values of 1e-4 and up (1e-3 and up when ``digits`` is 1) are formatted together in fixed notation, smaller
    ones together on their own; values under machine epsilon print as ``<2e-16``, with a space after ``<`` when
    the other p-values are wider than six characters.

    Parameters
    ----------
    pvalues : sequence of float
        The p-values.
    digits : int
        Significant digits, as ``format.pval(pv, digits)``.

    Returns
    -------
    list of str
        One string per p-value, unpadded.
    """
    p = np.asarray(pvalues, dtype=float)
    out = [""] * len(p)
    eps = float(np.finfo(float).eps)
    is0 = p < eps
    rest = np.flatnonzero(~is0)
    expo = np.floor(np.log10(np.where(p[rest] > 0, p[rest], 1e-50)))
    fixp = (expo >= -3) | ((expo == -4) & (digits > 1))
    for idx in (rest[fixp], rest[~fixp]):
        for i, s in zip(idx, format_num(p[idx], digits)):
            out[i] = s.strip()
    if np.any(is0):
        d = max(1, digits - 2)
        if rest.size:
            nc = max(len(out[i]) for i in rest)
            if d > 1 and d + 6 > nc:
                d = max(1, nc - 7)
            sep = "" if d == 1 and nc <= 6 else " "
        else:
            sep = "" if d == 1 else " "
        tiny = "<" + sep + format_num([eps], d)[0].strip()
        for i in np.flatnonzero(is0):
            out[i] = tiny
    return out


def abbreviate(name: str, minlength: int = 6) -> str:
    """Shorten ``name`` as R's ``abbreviate`` does: drop lower-case vowels, then lower-case letters, from the right."""
    chars = list(name)
    for drop in ("aeiou", "abcdefghijklmnopqrstuvwxyz"):
        i = len(chars) - 1
        while len(chars) > minlength and i > 0:
            if chars[i] in drop and chars[i - 1] != " ":
                del chars[i]
            i -= 1
    return "".join(chars[:max(minlength, 0)] if len(chars) > minlength else chars)


def format_table(rows: Sequence[str], header: Sequence[str], cells: Sequence[Sequence[str]],
                 right: bool = True) -> list[str]:
    """Lay out a character matrix as R's ``print.default`` does: row names left, columns padded, one space apart."""
    rw = max([len(r) for r in rows] + [0])
    widths = [max([len(h)] + [len(row[j]) for row in cells]) for j, h in enumerate(header)]

    def pad(s: str, w: int) -> str:
        return s.rjust(w) if right else s.ljust(w)

    lines = [" " * rw + "".join(" " + pad(h, w) for h, w in zip(header, widths))]
    for r, row in zip(rows, cells):
        lines.append(r.ljust(rw) + "".join(" " + pad(c, w) for c, w in zip(row, widths)))
    return lines


def format_named(names: Sequence[str], cells: Sequence[str]) -> list[str]:
    """Lay out a named vector as R prints it: names over values, every column the same width."""
    width = max(len(str(c)) for c in [*names, *cells])
    return [" ".join(str(c).rjust(width) for c in row) for row in (names, cells)]


def zapsmall(values: Sequence[float], digits: int) -> np.ndarray:
    """Round values that are negligible beside the largest to 0, as R's ``zapsmall(values, digits)``."""
    x = np.asarray(values, dtype=float)
    mx = float(np.max(np.abs(x))) if x.size else 0.0
    # R 4.2 rounds to digits - log10(mx) places, the non-integer count itself rounded half up.
    return np.round(x, max(0, math.floor(digits - math.log10(mx) + 0.5)) if mx > 0 else digits)
