"""lme4's formula language: parsing ``y ~ x * f + (x | g)`` and building its design matrices with R's names.

Parsing is done by ``formulae`` (the mixed-model formula library behind Bambi): its scanner and parser give the
syntax tree, its resolver expands ``*``, ``:``, ``/``, ``0 +`` and ``- 1`` into terms. Two things are ours:

- ``formulae`` resolves every random term ``(x | g)`` into separate, uncorrelated pieces (``(1 | g)`` and
  ``(x | g)``, Bambi's model), which loses what lme4 means by ``(x | g)``: one correlated block. So the random
  terms are taken from the syntax tree, one block per ``( ... | g)``, and only their left-hand sides are resolved.
  ``||`` is not in ``formulae``'s grammar: its two ``|`` tokens are merged before parsing and the term is expanded
  as lme4 does, ``(x + z || g)`` into ``(1 | g) + (0 + x | g) + (0 + z | g)``.
- The columns are built here, from the resolved terms, with R's rules and names: numeric columns as they are;
  string, categorical and boolean columns as factors (levels: a categorical's own order, else sorted), coded by
  treatment contrasts against the first level when the term without that factor is in the model (the intercept
  counts as the empty term), by one indicator per level otherwise; terms ordered by degree as R's ``terms()``
  orders them (an interaction's variables in order of first appearance); names as lme4 prints them
  (``SexMale``, ``age:SexMale``). ``formulae``'s own design matrices name columns ``Sex[Male]`` and take seconds
  at 10^6 rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula", "design_columns", "grouping_factor"]

@dataclass(frozen=True)
class RandomTerm:
    """One random-effects block ``(expr | factor)``: correlated effects of the columns of ``expr`` per level.

    Attributes
    ----------
    terms : tuple of tuple of str
        The left-hand side's terms, each a tuple of variable names (``()`` is not used: see ``intercept``).
    intercept : bool
        Whether the block has a random intercept.
    factor : str
        The grouping factor's name: a column, or an interaction of columns written as lme4 names it
        (``"a:b"``; ``(1 | a/b)`` gives the terms of ``a`` and ``b:a``).
    text : str
        The term as lme4 would write it, for messages and ``summary()``.
    components : tuple of str
        The columns whose interaction is the grouping factor, in the order of its name (one for a plain factor).
    """

    terms: tuple
    intercept: bool
    factor: str
    text: str
    components: tuple = ()

    @property
    def columns(self) -> tuple:
        """The data columns that make up the grouping factor."""
        return self.components or (self.factor,)


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed terms (R's order) and random blocks (``||`` already expanded)."""

    response: str
    intercept: bool
    fixed: tuple
    random: tuple


def _fail(formula: str, problem: str) -> ValueError:
    return ValueError(f"formula {formula!r}: {problem}")


def _merge_double_bars(tokens: list) -> list:
    """Turn two adjacent ``|`` tokens into one ``|`` token whose lexeme is ``||`` (``formulae`` has no ``||``)."""
    from formulae.token import Token

    out = []
    for tok in tokens:
        if out and tok.kind == "PIPE" and out[-1].kind == "PIPE" and out[-1].lexeme == "|":
            out[-1] = Token("PIPE", "||")
        else:
            out.append(tok)
    return out


def _components(term, formula: str, where: str) -> tuple:
    """The variable names of one resolved ``formulae`` term; function calls are refused."""
    names = []
    for comp in term.components:
        if type(comp).__name__ != "Variable":
            raise _fail(formula, f"{where}: {comp.name!r} is a function call; compute it as a column of data first")
        names.append(str(comp.name))
    return tuple(names)


def _resolve_terms(node, formula: str, where: str) -> tuple[bool | None, list]:
    """Resolve a piece of the syntax tree into (intercept: True/False/None if unstated, [terms])."""
    from formulae.expr import Binary, Literal
    from formulae.resolver import Resolver
    from formulae.token import Token

    try:
        res = Resolver(node).resolve()
    except Exception:  # "x - 1": formulae subtracts the intercept only from a model that has one
        try:
            res = Resolver(Binary(Literal(1), Token("PLUS", "+"), node)).resolve()
        except Exception as err:
            raise _fail(formula, f"{where} cannot be read ({err})") from None
    intercept, terms = None, []
    for t in getattr(res, "terms", [res]):
        kind = type(t).__name__
        if kind == "Intercept":
            intercept = True
        elif kind == "NegatedIntercept":
            intercept = False
        elif kind == "Term":
            terms.append(_components(t, formula, where))
        else:
            raise _fail(formula, f"{where}: {kind} terms are not supported")
    return intercept, terms


def _walk_sum(node, formula: str, bars: list) -> None:
    """Collect the random terms ``( ... | g)`` of a sum (left to right)."""
    kind = type(node).__name__
    if kind == "Binary" and node.operator.kind == "PLUS":
        _walk_sum(node.left, formula, bars)
        _walk_sum(node.right, formula, bars)
    elif kind == "Binary" and node.operator.kind == "MINUS":
        _walk_sum(node.left, formula, bars)
        if _has_bar(node.right):
            raise _fail(formula, "a random term cannot be subtracted")
    elif kind == "Grouping" and type(node.expression).__name__ == "Binary" and node.expression.operator.kind == "PIPE":
        bars.append(node.expression)
    elif _has_bar(node):
        raise _fail(formula, "a random term must be written as its own summand in parentheses, like (x | g)")


def _has_bar(node) -> bool:
    if type(node).__name__ == "Binary":
        return node.operator.kind == "PIPE" or _has_bar(node.left) or _has_bar(node.right)
    if type(node).__name__ in ("Grouping", "Unary"):
        return _has_bar(getattr(node, "expression", None) or getattr(node, "right", None))
    return False


def _term_text(terms: list, intercept: bool, factor: str, bar: str = "|") -> str:
    parts = [":".join(t) for t in terms]
    lhs = " + ".join(parts) if intercept else " + ".join(["0", *parts])
    return f"({lhs or '1'} {bar} {factor})"


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into its response, fixed-effect terms and random-effect blocks.

    Parameters
    ----------
    formula : str
        E.g. ``"Reaction ~ Days + (Days | Subject)"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    ValueError
        A formula the parser cannot read, a response that is not one column, a function call, a random term
        that is not a summand.
    """
    from formulae.parser import Parser
    from formulae.resolver import Resolver
    from formulae.scanner import Scanner

    if not isinstance(formula, str):
        raise ValueError(f"formula must be a string like 'y ~ x + (x | g)', got {type(formula).__name__}")
    try:
        ast = Parser(_merge_double_bars(Scanner(formula).scan())).parse()
    except Exception as err:
        raise _fail(formula, f"cannot be parsed ({err})") from None
    if type(ast).__name__ != "Binary" or ast.operator.kind != "TILDE":
        raise _fail(formula, "needs a response and a right-hand side, like 'y ~ x + (1 | g)'")
    if type(ast.left).__name__ != "Variable":
        raise _fail(formula, "the response must be one column of data")
    bars: list = []
    _walk_sum(ast.right, formula, bars)
    try:
        model = Resolver(ast).resolve()
    except Exception as err:
        raise _fail(formula, f"cannot be read ({err})") from None
    intercept = any(type(t).__name__ == "Intercept" for t in model.common_terms)
    fixed = [_components(t, formula, "fixed part") for t in model.common_terms if type(t).__name__ == "Term"]
    # R's terms(): variables in order of first appearance, each interaction's variables in that order
    # (0 + Sex + age:Sex names SexFemale:age), terms by degree and in order of appearance within a degree.
    order = {v: k for k, v in enumerate(dict.fromkeys(v for t in fixed for v in t))}
    fixed = sorted((tuple(sorted(t, key=order.get)) for t in fixed), key=len)
    random = []
    for bar in bars:
        lhs_int, lhs_terms = _resolve_terms(bar.left, formula, "a random term's left-hand side")
        _, rhs_terms = _resolve_terms(bar.right, formula, "a random term's grouping factor")
        if not rhs_terms:
            raise _fail(formula, "a random term needs a grouping factor, like (1 | g)")
        # (1 | a:b) is one factor named a:b; (1 | a/b) resolves to a and a:b, which lme4 names a and b:a.
        groupings = [tuple(reversed(t)) if len(rhs_terms) > 1 else t for t in rhs_terms]
        has_int = lhs_int is not False
        for comps in groupings:
            factor = ":".join(comps)
            if not has_int and not lhs_terms:
                raise _fail(formula, f"random term ({'0'} | {factor}) has no effects")
            if bar.operator.lexeme == "||":  # lme4's expandDoubleVert: one block per term
                if has_int:
                    random.append(RandomTerm((), True, factor, f"(1 | {factor})", comps))
                for t in lhs_terms:
                    random.append(RandomTerm((t,), False, factor, _term_text([t], False, factor), comps))
            else:
                random.append(RandomTerm(tuple(lhs_terms), has_int, factor,
                                         _term_text(lhs_terms, has_int, factor), comps))
    if not random:
        raise _fail(formula, "has no random term like (1 | g); for a linear model use fit_lm")
    return ParsedFormula(response=str(ast.left.name.lexeme), intercept=intercept, fixed=tuple(fixed),
                         random=tuple(random))


# ----------------------------------------------------------------------------------------- design matrices
def _is_factor(col: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype)


def _level_name(v) -> str:
    return "TRUE" if v is True or v is np.True_ else "FALSE" if v is False or v is np.False_ else str(v)


def _factor(col: pd.Series, name: str, levels: pd.Index | None = None) -> tuple[np.ndarray, list]:
    """Integer codes and level names of a factor column (a categorical's own levels, else sorted values).

    With ``levels`` given (the levels of the whole data, when ``col`` is one chunk of it), the codes are against
    those: a level this chunk lacks keeps its column (all zeros here), as it must for chunks' sums to add.
    """
    if levels is not None:
        values = col.astype(object) if isinstance(col.dtype, pd.CategoricalDtype) else col
        codes = pd.Index(levels).get_indexer(values)
        if np.any(codes < 0):
            bad = values[codes < 0]
            if bad.isna().any():
                raise ValueError(f"data: column {name!r} has missing values; drop those rows first (R's na.omit)")
            raise ValueError(f"data: column {name!r} has the level {bad.iloc[0]!r}, not among its levels "
                             f"{list(levels)}")
        return codes, [_level_name(v) for v in levels]
    if isinstance(col.dtype, pd.CategoricalDtype):
        cat = col.cat.remove_unused_categories()
        codes, levels = cat.cat.codes.to_numpy(), [str(c) for c in cat.cat.categories]
    else:
        codes, uniq = pd.factorize(col, sort=True)
        levels = ["TRUE" if v is True else "FALSE" if v is False else str(v) for v in uniq]
    if np.any(codes < 0):
        raise ValueError(f"data: column {name!r} has missing values; drop those rows first (R's na.omit)")
    return codes, levels


def design_columns(data: pd.DataFrame, terms, intercept: bool, where: str,
                   stack: bool = True, levels: dict | None = None) -> tuple[list, np.ndarray | list]:
    """The model matrix of ``terms`` (R's ``model.matrix``): column names and an (n, p) float array.

    Parameters
    ----------
    data : DataFrame
    terms : sequence of tuple of str
        Terms, each a tuple of column names (an interaction when longer than one), in R's order.
    intercept : bool
    where : str
        Which part of the formula, for messages.
    stack : bool
        False: the columns as a list of contiguous 1-D arrays (no (n, p) copy; what the O(n) pass reads).
    levels : dict, optional
        ``{column: Index of its levels}`` for factor columns, when ``data`` is one chunk of a larger data set
        (the levels of the whole, in R's order); by default each factor's levels are those in ``data``.
    """
    n = len(data)
    present = {frozenset()} if intercept else set()
    names, cols = (["(Intercept)"], [np.ones(n)]) if intercept else ([], [])
    cache: dict = {}
    for term in terms:
        parts = [("", None)]  # (name, values or None for all ones)
        for var in term:
            col = data[var]
            if _is_factor(col):
                if var not in cache:
                    cache[var] = _factor(col, var, (levels or {}).get(var))
                codes, labs = cache[var]  # not ``levels``: that is the whole data's, for the next factor
                contrast = frozenset(term) - {var} in present
                use = labs[1:] if contrast else labs
                if contrast and len(labs) < 2:
                    raise ValueError(f"{where}: factor {var!r} has only one level ({labs[0]!r}); "
                                     "drop it from the formula")
                new = [(f"{var}{lev}", (codes == k).astype(float))
                       for k, lev in enumerate(labs) if lev in use]
            else:
                values = col.to_numpy(dtype=float, na_value=np.nan)
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"data: column {var!r} ({where}) contains NaN or inf; drop or impute "
                                     "those rows first")
                new = [(var, values)]
            parts = [(f"{pn}:{nn}" if pn else nn, nv if pv is None else pv * nv) for nn, nv in new for pn, pv in parts]
        present.add(frozenset(term))
        for nm, v in parts:
            names.append(nm)
            cols.append(v)
    if not stack:
        return names, cols
    if not cols:
        return [], np.empty((n, 0))
    return names, np.column_stack(cols)


def grouping_factor(data: pd.DataFrame, term: RandomTerm) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and level labels of a random term's grouping factor, an interaction of columns included.

    Levels of an interaction ``a:b`` are the combinations present in the data, labelled ``"a_level:b_level"`` and
    ordered by the first column's levels, then the second's (R's ``a:b`` with unused levels dropped).

    Parameters
    ----------
    data : DataFrame
    term : RandomTerm
    """
    from .design import group_codes

    codes, labels = None, None
    for col in term.columns:
        if data[col].isna().any():
            raise ValueError(f"data: grouping factor {col!r} has missing values (random term {term.text}); "
                             "drop those rows first")
        c, lev = group_codes(data[col])
        if len(term.columns) == 1:
            return c, lev
        lev = [str(v) for v in lev]
        if codes is None:
            codes, labels = c, lev
        else:
            combined = codes.astype(np.int64) * len(lev) + c
            uniq, codes = np.unique(combined, return_inverse=True)
            labels = [f"{labels[u // len(lev)]}:{lev[u % len(lev)]}" for u in uniq]
    return codes.astype(np.intp, copy=False), pd.Index(labels)
