"""The config's validation errors as the one line users get, e.g. `config: reps = 0 is out of range [1, 1000]`."""

from __future__ import annotations

from typing import Any, get_args

from annotated_types import Ge, Le
from pydantic import BaseModel, ValidationError

_EXPECTED = {
    "bool_type": "expected true or false",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a number",
    "string_type": "expected a string",
    "tuple_type": "expected a list",
    "model_type": "expected a mapping",
}


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    cls: type[BaseModel] = root
    for part in loc:
        cls = cls.model_fields[part].annotation  # type: ignore[assignment]
    return cls


def _range(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[float, float]:
    meta = _section(root, loc[:-1]).model_fields[loc[-1]].metadata
    return next(m.ge for m in meta if isinstance(m, Ge)), next(m.le for m in meta if isinstance(m, Le))


def message(exc: ValidationError, root: type[BaseModel]) -> str:
    """The first error of `exc` (validating the config model `root`) as the one line users get."""
    err = exc.errors()[0]
    kind, loc, value = err["type"], tuple(err["loc"]), err["input"]
    where = _where(loc)
    if kind == "extra_forbidden":
        known = ", ".join(sorted(_section(root, loc[:-1]).model_fields))
        return f"config: unknown key '{where}'; known: {known}"
    if kind in ("greater_than_equal", "less_than_equal"):
        lo, hi = _range(root, loc)
        return f"config: {where} = {value} is out of range [{lo:g}, {hi:g}]"
    if kind == "literal_error":
        choices = get_args(_section(root, loc[:-1]).model_fields[loc[-1]].annotation)
        return f"config: {where} = {value!r}; expected one of {', '.join(choices)}"
    if kind == "value_error":
        text = str(err["ctx"]["error"])
        return f"config: {where}{'' if text.startswith(':') else ' '}{text}"
    expected = _EXPECTED.get(kind, err["msg"].lower())
    return f"config: {where or 'top level'}: {expected}, got {value!r}"
