"""Checking a study spec's values: errors that name the key path and the TOML line.

Private helpers of :mod:`lcnfast.study.spec`. Every check takes a context (:class:`Ctx`, which
knows the TOML text) and the key path of the value, and raises :class:`SpecError` (a
``ValueError``) as ``"<key path>: <what is wrong> (<file>, line <n>)"``.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re

class SpecError(ValueError):
    """A study spec is invalid (a ``ValueError`` whose message names the key path)."""


# ----------------------------------------------------------------------------- locating errors
class Locator:
    """Finds the TOML line of a key path (best effort: ``[[table]]`` headers and ``key =``)."""

    def __init__(self, text):
        self.lines = text.splitlines() if text else []

    def line(self, path):
        if not self.lines:
            return None
        parts = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\[\d+\]", path)
        start, end = 0, len(self.lines)
        header_re = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.]+)\s*\]?\]")
        found = None
        tables = []  # the keys of the table headers matched so far
        i = 0
        while i < len(parts):
            key = parts[i]
            idx = None
            if i + 1 < len(parts) and parts[i + 1].startswith("["):
                idx = int(parts[i + 1][1:-1])
            # a table header for this key within [start, end), or a dotted header of the full
            # path anywhere after the parent's ([quick.data] after [quick]'s keys)
            dotted = ".".join([*tables, key])
            hits = [
                n for n in range(start, len(self.lines))
                if (h := header_re.match(self.lines[n])) and h.group(1) == dotted
            ] or [
                n for n in range(start, end)
                if (h := header_re.match(self.lines[n])) and h.group(1).split(".")[-1] == key
            ]  # fmt: skip
            if hits:
                n = hits[idx] if idx is not None and idx < len(hits) else hits[0]
                found = n
                tables.append(key)
                nxt = [m for m in range(n + 1, len(self.lines)) if header_re.match(self.lines[m])]
                start, end = n + 1, (nxt[0] if nxt else len(self.lines))
            elif idx is None and any(
                (h := header_re.match(ln)) and h.group(1).startswith(dotted + ".")
                for ln in self.lines[start:]
            ):  # only dotted headers below this key ([quick.data], no [quick]): descend
                tables.append(key)
                end = len(self.lines)
            else:
                kre = re.compile(rf"^\s*{re.escape(key)}\s*=|[{{,]\s*{re.escape(key)}\s*=")
                if not tables:  # a top-level key sits before the first table header (a
                    # missing `name` was shown at the line of [[losses]]'s name)
                    end = next((n for n in range(len(self.lines))
                                if header_re.match(self.lines[n])), len(self.lines))
                keyhits = [n for n in range(start, end) if kre.search(self.lines[n])]
                if keyhits:
                    found = keyhits[0]
                    start = keyhits[0]
                break
            i += 2 if idx is not None else 1
        return None if found is None else found + 1


class Ctx:
    """Where a spec came from, for errors: ``error(path, msg)`` names the key path and its TOML
    line. ``overrides``: the key paths a ``[quick]`` table replaced; an error at or under one
    of them is reported at ``quick.<path>``, where the value is written. ``stored``: the spec
    is one a run recorded (:func:`lcnfast.study.spec.stored_study`): its external files are
    taken as recorded, not read."""

    def __init__(self, text, source, stored=False):
        self.loc = Locator(text)
        self.source = source
        self.overrides = ()
        self.stored = stored

    def error(self, path, msg):
        if any(path == o or path.startswith((o + ".", o + "[")) for o in self.overrides):
            path = "quick." + path
        line = self.loc.line(path)
        where = f" ({self.source}, line {line})" if line and self.source else (
            f" (line {line})" if line else ""
        )
        return SpecError(f"{path}: {msg}{where}")


# ----------------------------------------------------------------------------- value checks
#: the largest count (steps, saves, samples, flows) a spec may give: the engine's counts run in
#: int64 with room for products (lcnfast.flows refuses more, as "must be <= 2**62")
COUNT_MAX = 2**62


def whole(ctx, path, x, minimum, maximum=COUNT_MAX):
    """A whole number in [minimum, maximum] (maximum None: unbounded); integral floats taken."""
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise ctx.error(path, f"must be a whole number, got {x!r}")
    if x < minimum:
        raise ctx.error(path, f"must be >= {minimum}, got {x}")
    if maximum is not None and x > maximum:
        bound = "2**62" if maximum == COUNT_MAX else str(maximum)
        raise ctx.error(path, f"must be <= {bound}, got {x}")
    return int(x)


def real(ctx, path, x, *, low=None, positive=False):
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ctx.error(path, f"must be a number, got {x!r}")
    try:
        x = float(x)
    except OverflowError:  # a Python int beyond float64
        raise ctx.error(path, f"must be finite, got an integer of {len(str(x))} digits") from None
    if not math.isfinite(x):
        raise ctx.error(path, f"must be finite, got {x!r}")
    if positive and x <= 0:
        raise ctx.error(path, f"must be > 0, got {x!r}")
    if low is not None and x < low:
        raise ctx.error(path, f"must be >= {low}, got {x!r}")
    return x


def table(ctx, path, x):
    if not isinstance(x, dict):
        raise ctx.error(path, f"must be a table, got {type(x).__name__} {x!r}")
    return x


def known(ctx, path, table, allowed):
    for key in table:
        if key not in allowed:
            close = [a for a in sorted(allowed) if _similar(key, a)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ctx.error(
                f"{path}.{key}" if path else key,
                f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}",
            )


def _similar(a, b):
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.75


def as_list(x):
    return list(x) if isinstance(x, list) else [x]


def factor_list(ctx, path, x):
    """``x`` as a list (a single value: one level); an empty list is an error (a grid factor
    without levels would make a study of 0 flows)."""
    if isinstance(x, list) and not x:
        raise ctx.error(path, "must not be empty (give one value, or a list of levels)")
    return as_list(x)
