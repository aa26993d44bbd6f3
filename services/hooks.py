"""A team's own pre- and post-processing: DataFrame in, DataFrame out, declared columns.

A hook module lives in the team's repository (under ``services/``, or a file named in
``bentoship.toml [service] hooks``; the build copies it into the image's code layer, so a
code-only hotfix is how it changes). It defines either function, or both::

    from services.hooks import Column, RejectInput, postprocessor, preprocessor

    @preprocessor(request=[Column(name="user_id", type="string"),
                           Column(name="nights", type="long", example=3)])
    def preprocess(request: pd.DataFrame) -> pd.DataFrame:
        ...  # return one row per request row, with the model's feature columns

    @postprocessor(response=[Column(name="price_band", type="string")])
    def postprocess(request: pd.DataFrame, answer: pd.DataFrame) -> pd.DataFrame:
        ...  # return one row per request row, with the declared columns

``request`` declares the fields a caller sends (instead of the model's features): the service
validates every row against it (the same rules and 4xx error bodies as for features) and the
OpenAPI spec documents it; the DataFrame has those columns with their pandas dtypes (optional
fields missing are NaN/None), plus the routing key when the caller sent one. ``preprocess``
must return the model's features (extra columns are ignored). ``answer`` has the service's
answer columns (``prediction``, ``probabilities`` for a classifier, ``score`` for a binary
one, ``variant``, ``model_version``); ``postprocess`` returns the declared ``response``
columns, which are added to (or replace) the answer's; ``variant`` and ``model_version`` stay
the service's.

A hook that refuses a row raises :class:`RejectInput`: the caller gets a 422
``invalid_input`` naming each row and field. Anything else a hook raises, or a frame without
the promised columns, is ``preprocess_failed`` / ``postprocess_failed`` (500). Without hooks
the model signature is the contract and no pandas runs per request.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from services.config import Feature
from services.errors import ConfigError, describe

Column = Feature  # a declared request or response column: name, type, required, example
F = TypeVar("F", bound=Callable[..., Any])

_REQUEST = "__bentoship_request__"
_RESPONSE = "__bentoship_response__"
RESERVED = ("variant", "model_version")


class RejectInput(Exception):
    """Raised by a hook to refuse rows: each problem is ``(row, field, why)``; 422 to the caller.

    ``row`` is the 0-based position in the request, ``field`` a request field or None.
    """

    def __init__(self, problems: Sequence[tuple[int | None, str | None, str]]) -> None:
        self.problems = [(row, field, str(why)) for row, field, why in problems]
        if not self.problems:
            raise ValueError("RejectInput needs at least one (row, field, why) problem")
        super().__init__("; ".join(why for _, _, why in self.problems))


def preprocessor(*, request: Sequence[Feature] = ()) -> Callable[[F], F]:
    """Declare a preprocess hook and the request fields it takes (empty: the model's features)."""

    def mark(function: F) -> F:
        setattr(function, _REQUEST, tuple(request))
        return function

    return mark


def postprocessor(*, response: Sequence[Feature]) -> Callable[[F], F]:
    """Declare a postprocess hook and the response columns it returns."""
    names = [c.name for c in response]
    if not names:
        raise ValueError("postprocessor(response=...) must declare at least one column")
    clash = sorted(set(names) & set(RESERVED))
    if clash:
        raise ValueError(f"response columns {clash} are the service's own")

    def mark(function: F) -> F:
        setattr(function, _RESPONSE, tuple(response))
        return function

    return mark


@dataclass(frozen=True)
class Hooks:
    """A hook module's functions and what they declare (``None``: that hook is not set)."""

    preprocess: Callable[..., Any] | None
    postprocess: Callable[..., Any] | None
    request: tuple[Feature, ...]
    response: tuple[Feature, ...]


def load_hooks(module_name: str | None) -> Hooks:
    """Import a hook module; its ``preprocess``/``postprocess`` and their declarations."""
    if module_name is None:
        return Hooks(None, None, (), ())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a config problem
        raise ConfigError(f"hooks {module_name!r}: cannot import it ({describe(exc)})") from exc
    pre = getattr(module, "preprocess", None)
    post = getattr(module, "postprocess", None)
    for name, function in (("preprocess", pre), ("postprocess", post)):
        if function is not None and not callable(function):
            raise ConfigError(f"hooks {module_name!r}: {name} is not a function")
    if pre is None and post is None:
        raise ConfigError(f"hooks {module_name!r} defines neither preprocess nor postprocess")
    if post is not None and getattr(post, _RESPONSE, None) is None:
        raise ConfigError(
            f"hooks {module_name!r}: postprocess must declare its response columns with "
            "@postprocessor(response=[Column(...), ...])"
        )
    return Hooks(
        preprocess=pre,
        postprocess=post,
        request=tuple(getattr(pre, _REQUEST, ())) if pre is not None else (),
        response=tuple(getattr(post, _RESPONSE, ())) if post is not None else (),
    )
