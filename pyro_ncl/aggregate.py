"""Seeds summarised: the one definition of "mean ± std over runs" every report uses (the frontier, the learning
curve, uncertainty.py, compare.py), and its text form.

    mean_std([0.71, 0.73, nan])   → (0.72, 0.01414…, 2)   (finite values only; std the sample standard deviation,
                                                           0 for one value; (nan, nan, 0) for none)
    fmt_mean_std(0.72, 0.014, 2)  → "0.720 ± 0.014"        ("0.720" for one value, "–" for none)
    group_by(rows, key)           → {key(row): [rows…]}     (in first-seen order)
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple


def mean_std(values: Iterable[Optional[float]]) -> Tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values (NaN, NaN, 0 if none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite)


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 3, count: bool = False) -> str:
    """"0.720 ± 0.014" (n > 1), "0.720" (n = 1), "–" (n = 0 or a NaN mean); with ``count`` " (n)" appended."""
    if n == 0 or not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"
    return f"{text} ({n})" if count else text


def group_by(rows: Sequence[Any], key: Callable[[Any], Hashable]) -> Dict[Hashable, List[Any]]:
    """Rows grouped by ``key(row)``, groups and members in first-seen order."""
    groups: Dict[Hashable, List[Any]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups
