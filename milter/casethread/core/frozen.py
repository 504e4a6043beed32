"""`@frozen`: a frozen dataclass that is nearly as quick to make as a plain one.

A frozen dataclass's generated `__init__` sets each field through `object.__setattr__`, to get
past the class's own `__setattr__`, which refuses: about 0.1 us a field. The engine makes some
25 small values per message (edits, aliases, verdicts, records; MIME parts outbound).
`@frozen` builds the dataclass as usual, then gives it an `__init__` with the same signature
and defaults that stores the fields straight into the instance's `__dict__`: half the cost of
a 3-field value; measured, outbound stamping 301 -> 288 us, inbound resolution 2-3 us of ~58.
Everything else (equality, hash, repr, refusing assignment, `dataclasses.replace`) is the
dataclass's own.

Only what the values here need is supported: plain fields with plain defaults. A class with
`__post_init__`, a default factory, keyword-only or init=False fields, or slots is refused
when it is defined.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def frozen(cls: type[T]) -> type[T]:
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    unsupported = (
        hasattr(cls, "__post_init__")
        or hasattr(cls, "__slots__")
        or len(fields) != len(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        or any(f.default_factory is not dataclasses.MISSING or f.kw_only or not f.init
               for f in fields)
    )
    if unsupported:
        raise TypeError(f"@frozen supports plain fields only: {cls.__qualname__}")
    defaults: dict[str, Any] = {}
    params = []
    for f in fields:
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            defaults[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    # The instance dict's local name is one no field has (a class body mangles `__x`): a
    # field named like it would be stored as the dict itself.
    stores = "".join(f"    __store[{f.name!r}] = {f.name}\n" for f in fields)
    source = f"def __init__(self, {', '.join(params)}):\n    __store = self.__dict__\n{stores}"
    namespace = dict(defaults)
    exec(source, namespace)  # as dataclasses itself writes __init__: the names are fields'
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
