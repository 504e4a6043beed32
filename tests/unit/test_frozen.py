"""`@frozen` (core/frozen.py): a frozen dataclass with a quicker __init__, and nothing else new."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

import casethread
from casethread.core.frozen import frozen

PACKAGE = Path(casethread.__file__).parent


def frozen_classes() -> list[type]:
    """Every class the package decorates with @frozen, found in its source."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = None
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "frozen" for d in node.decorator_list
            ):
                if module is None:
                    dotted = path.relative_to(PACKAGE.parent).with_suffix("").parts
                    module = importlib.import_module(".".join(dotted))
                found.append(getattr(module, node.name))
    return found


CLASSES = frozen_classes()


def test_the_hot_values_are_found() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"AddHeader", "Alias", "CaseRecord", "Decision", "Header", "Message"} <= names


def reference(cls: type) -> Any:
    """The same fields as a frozen dataclass of the stdlib's own making."""
    fields = [
        (f.name, f.type) if f.default is dataclasses.MISSING
        else (f.name, f.type, dataclasses.field(default=f.default))
        for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_signature_is_the_dataclass_one(cls: type) -> None:
    ours = inspect.signature(cls).parameters
    theirs = inspect.signature(reference(cls)).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]
    assert vars(cls)["__init__"].__qualname__ == f"{cls.__qualname__}.__init__"


@frozen
class Sample:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()


def test_values_behave_as_frozen_dataclasses() -> None:
    a = Sample("x", 2)
    assert (a.name, a.count, a.tags) == ("x", 2, ())
    assert a == Sample(name="x", count=2, tags=()) and hash(a) == hash(Sample("x", 2))
    assert a != Sample("x", 3)
    assert repr(a) == "Sample(name='x', count=2, tags=())"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.count = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del a.name
    assert dataclasses.replace(a, count=5) == Sample("x", 5)
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("x", 1, (), 4)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("x", name="y")  # type: ignore[misc]


def test_any_field_name_is_stored_as_given() -> None:
    """The generated __init__ keeps the instance dict in a local of its own: a field named as
    that local once stored the dict in itself."""
    @frozen
    class Named:
        fields: dict[str, int]
        store: int = 0

    value = Named({"a": 1}, 2)
    assert (value.fields, value.store) == ({"a": 1}, 2)


def test_only_plain_fields_are_accepted() -> None:
    with pytest.raises(TypeError):
        @frozen
        class WithFactory:
            items: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError):
        @frozen
        class WithPostInit:
            n: int

            def __post_init__(self) -> None:
                pass

    with pytest.raises(TypeError):
        @frozen
        class WithKeywordOnly:
            n: int = dataclasses.field(kw_only=True)

    with pytest.raises(TypeError):
        @frozen
        class WithoutInit:
            n: int = dataclasses.field(default=0, init=False)

    with pytest.raises(TypeError):
        @frozen
        class WithSlots:
            __slots__ = ("n",)
            n: int
