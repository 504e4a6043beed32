"""`lazy`: `functools.cached_property` for per-message objects.

Python 3.11's `cached_property` takes a lock (one per property, shared by every instance) on
each first access: that is every access for an object that lives for one message, and the
milter's threads would queue on it. A per-message object is used by one thread, so no lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class lazy(Generic[T]):
    """Computes on first access and stores the value in the instance's `__dict__`, which
    then shadows this (non-data) descriptor."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self._func = func
        self._name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> lazy[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> T | lazy[T]:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._func(instance)
        return value
