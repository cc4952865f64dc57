"""Typed reading of plugin-owned recipe tables, with errors that name the key path.

Core recipe sections are validated by :mod:`tracer_cli.recipe`; tables a plugin owns (the
``[model]`` keys of a backbone, a dataset's options, the ``[task]`` table) are read with
:class:`Options`, so third-party plugins give the same quality of error message::

    opts = Options(spec, path="data.train")
    root = opts.path("root")
    size = opts.int("size", default=1000, minimum=1, maximum=10**6)
    opts.done()          # unknown keys are errors
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from tracer_cli.errors import RecipeError

_MISSING = object()
# Plugin numbers end up in float32 tensors; a larger one overflows deep inside torch.
FLOAT32_MAX = 3.4028234663852886e38


def fits_float32(value: int | float) -> bool:
    """Finite and within float32's range (recipe numbers become float32 tensors in torch)."""
    try:
        return math.isfinite(float(value)) and abs(value) <= FLOAT32_MAX
    except OverflowError:  # an int too large for any float
        return False


class Options:
    """Reads keys from one table; remembers which were read so :meth:`done` can reject the rest."""

    def __init__(self, table: dict[str, Any], path: str):
        self._table = dict(table)
        self._path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _get(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        if name in self._table:
            return self._table[name]
        if default is _MISSING:
            raise RecipeError(self.key(name), "is required")
        return default

    def has(self, name: str) -> bool:
        return name in self._table

    def str(self, name: str, default: Any = _MISSING, choices: Iterable[str] | None = None) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise RecipeError(self.key(name), f"expected a string, got {value!r}")
        if choices is not None and value not in (choices := list(choices)):
            raise RecipeError(self.key(name), f"got {value!r}; allowed: {', '.join(choices)}")
        return value

    def int(self, name: str, default: Any = _MISSING, minimum: int | None = None,
            maximum: int | None = None) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(self.key(name), f"expected an integer, got {value!r}")
        self._check_bounds(name, value, minimum, maximum)
        return value

    def float(self, name: str, default: Any = _MISSING, minimum: float | None = None,
              maximum: float | None = None) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(self.key(name), f"expected a number, got {value!r}")
        if not fits_float32(value):
            raise RecipeError(self.key(name), f"got {value!r}; must be a finite number of "
                              f"magnitude at most {FLOAT32_MAX:.4g} (float32)")
        self._check_bounds(name, value, minimum, maximum)
        return float(value)

    def _check_bounds(self, name: str, value: Any, minimum: Any, maximum: Any) -> None:
        if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
            return
        if minimum is not None and maximum is not None:
            allowed = f"between {minimum} and {maximum:,}"
        else:
            allowed = f">= {minimum}" if minimum is not None else f"<= {maximum:,}"
        raise RecipeError(self.key(name), f"got {value}; must be {allowed}")

    def bool(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise RecipeError(self.key(name), f"expected true or false, got {value!r}")
        return value

    def str_list(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RecipeError(self.key(name), f"expected a list of strings, got {value!r}")
        return list(value)

    def path(self, name: str, default: Any = _MISSING) -> Any:
        value = self.str(name, default)
        if value is default and default is not _MISSING:
            return value
        return Path(value).expanduser()

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, default)

    def done(self, ignore: Sequence[str] = ()) -> None:
        """Raise for the first key that was never read (a typo, or a key of another plugin)."""
        unknown = sorted(set(self._table) - self._seen - set(ignore))
        if unknown:
            known = ", ".join(sorted(self._seen)) or "(none)"
            raise RecipeError(self.key(unknown[0]), f"unknown key; known keys here: {known}")
