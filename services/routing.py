"""Sticky, deterministic A/B assignment of rows to variants. Pure functions.

For a key ``k`` (a string) and the configured ``salt``::

    digest = sha256(f"{salt}:{k}".encode("utf-8")).digest()
    point  = int.from_bytes(digest[:8], "big") / 2**64 * 100      # uniform in [0, 100)
    variant = first variant (in config order) whose cumulative weight > point

so with weights ``control=90, treatment=10`` points in ``[0, 90)`` go to control and
``[90, 100)`` to treatment. The same key always lands on the same variant for a given salt
and weights; changing the salt reshuffles everyone.

Which key a row uses, first match wins:

1. the override header (``routing.override_header``, e.g. ``x-bentoship-variant``) names a
   variant: every row of the request goes to it, weight 0 included. An unknown name is
   the caller's mistake: ``invalid_input`` (422).
2. the row's own ``routing.key_field`` value (a string, or an integer used as its decimal
   string);
3. the request's ``routing.key_header`` value, for rows without their own key;
4. no key at all: the row is NOT sticky. It gets a fresh uniform random point, so keyless
   traffic still follows the configured split (always-control would starve the treatment
   of keyless traffic and bias the comparison). Callers who need stickiness send a key.

Rows of one request may go to different variants; the caller of :func:`assign` keeps the
output in input order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.config import ServiceConfig
from services.errors import InvalidInputError, problem

_SCALE = 100.0 / 2**64


@dataclass(frozen=True)
class Router:
    """Variant names and their cumulative weights, in config order."""

    names: tuple[str, ...]
    cumulative: tuple[float, ...]
    salt: str
    override_header: str | None = None

    @classmethod
    def from_config(cls, config: ServiceConfig) -> Router:
        total = 0.0
        cumulative = []
        for variant in config.variants:
            total += variant.weight
            cumulative.append(total)
        return cls(
            names=tuple(v.name for v in config.variants),
            cumulative=tuple(cumulative),
            salt=config.routing.salt,
            override_header=config.routing.override_header,
        )


def point_for_key(salt: str, key: str) -> float:
    """Where a key falls on ``[0, 100)``."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * _SCALE


def index_for_point(cumulative: Sequence[float], point: float) -> int:
    """The first variant whose cumulative weight exceeds ``point``.

    Zero-weight variants own an empty interval and are never chosen here.
    """
    for index, bound in enumerate(cumulative):
        if point < bound:
            return index
    # Only reachable if weights summed to less than 100, which config validation forbids.
    return len(cumulative) - 1


def variant_for_key(router: Router, key: str) -> str:
    return router.names[index_for_point(router.cumulative, point_for_key(router.salt, key))]


def assign(
    router: Router,
    row_keys: Sequence[str | None],
    header_key: str | None = None,
    override: str | None = None,
    draw: Callable[[], float] = random.random,
) -> np.ndarray:
    """One variant index per row (into ``router.names``); see the module docstring.

    ``draw`` returns a uniform float in ``[0, 1)`` for keyless rows; tests pass a seeded one.
    """
    count = len(row_keys)
    if override is not None:
        name = override.strip()
        if name not in router.names:
            allowed = ", ".join(router.names)
            raise InvalidInputError(
                "unknown variant override",
                [
                    problem(
                        None,
                        router.override_header,
                        f"unknown variant {name!r}; expected one of: {allowed}",
                    )
                ],
            )
        return np.full(count, router.names.index(name), dtype=np.intp)
    if len(router.names) == 1:
        return np.zeros(count, dtype=np.intp)
    cumulative = router.cumulative
    salt = router.salt
    out = np.empty(count, dtype=np.intp)
    header_point = None if header_key is None else point_for_key(salt, header_key)
    for i, key in enumerate(row_keys):
        if key is not None:
            point = point_for_key(salt, key)
        elif header_point is not None:
            point = header_point
        else:
            point = draw() * 100.0
        out[i] = index_for_point(cumulative, point)
    return out
