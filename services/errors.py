"""Every error the service raises on purpose.

Each error carries a stable machine-readable ``code``, the HTTP ``status`` it is answered
with, and a ``detail`` list of ``{"row": int | None, "field": str | None, "problem": str}``
objects. The HTTP layer turns any of them into exactly
``{"error": code, "detail": [...]}``; anything else escaping a handler is a bug and is
answered as ``internal_error`` (500) after logging the traceback.

Each error also names its ``cause``, who has to act on it: ``caller`` (the request was wrong),
``model`` (the model raised, answered garbage or cannot score rows that it should) or
``server`` (everything else). ``bentoship_responses_total{status, cause}`` counts every answer
with it, so a canary can tell a model that fails on real rows (a 422 of cause ``model``) from
callers sending bad requests (a 422 of cause ``caller``).

    ServiceError                  internal_error      500
    ├── ConfigError               config_invalid      500  bentoship.json or a hook is unusable
    ├── ModelLoadError            model_load_failed   500  a model could not be loaded
    │   └── UnsafeModelError      unsafe_model_refused 500 needs pickle/untrusted types, allow_pickle=false
    ├── RequestError              (4xx: the caller got something wrong)
    │   ├── MalformedBodyError    invalid_json        400  body is not UTF-8 JSON
    │   ├── InvalidInputError     invalid_input       422  rows/fields/header fail validation
    │   │   └── UnscorableRowsError invalid_input     422  the model cannot score these rows
    │   ├── TooManyRowsError      too_many_rows       413  more rows than max_rows
    │   └── PayloadTooLargeError  payload_too_large   413  body larger than the byte limit
    ├── HookError                 (500)
    │   ├── PreprocessError       preprocess_failed   500
    │   └── PostprocessError      postprocess_failed  500
    ├── ModelError                model_failed        500  predict raised or returned garbage
    └── UnavailableError          (503: retry, preferably elsewhere)
        ├── NotReadyError         not_ready           503  models not loaded / warmed up yet
        ├── ModelTimeoutError     model_timeout       503  a model call passed its deadline
        └── OverloadedError       overloaded          503  every model-call slot is taken
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypedDict


class Problem(TypedDict):
    """One entry of an error body's ``detail`` list."""

    row: int | None
    field: str | None
    problem: str


def problem(row: int | None, field: str | None, text: str) -> Problem:
    return {"row": row, "field": field, "problem": text}


class ServiceError(Exception):
    """Root of every error the service raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    cause: ClassVar[str] = "server"  # who has to act: caller | model | server

    def __init__(self, message: str, detail: Sequence[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail: list[Problem] = (
            list(detail) if detail is not None else [problem(None, None, message)]
        )
        self.variant: str | None = None  # set when the failure happened inside one variant

    def to_body(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": code, "detail": [...]}``."""
        return {"error": self.code, "detail": self.detail}


class ConfigError(ServiceError):
    """``bentoship.json`` (or a hook it names) is missing or invalid; the message names the key."""

    code = "config_invalid"


class ModelLoadError(ServiceError):
    """A model version could not be loaded from its MLflow model directory."""

    code = "model_load_failed"


class UnsafeModelError(ModelLoadError):
    """Loading the model could run arbitrary code (pickle, cloudpickle, non-sklearn skops
    types, a pickled pyfunc) and ``allow_pickle`` is false."""

    code = "unsafe_model_refused"


class RequestError(ServiceError):
    """The caller sent something wrong: always a 4xx."""

    status = 400
    cause = "caller"


class MalformedBodyError(RequestError):
    code = "invalid_json"
    status = 400


class InvalidInputError(RequestError):
    code = "invalid_input"
    status = 422


class UnscorableRowsError(InvalidInputError):
    """Rows the model cannot score although it scores the configured example: values outside
    what it computes with. Answered as ``invalid_input`` like any bad row, but counted as the
    model's failure: a new model that cannot score rows production scores is a bad release."""

    cause = "model"


class TooManyRowsError(RequestError):
    code = "too_many_rows"
    status = 413


class PayloadTooLargeError(RequestError):
    code = "payload_too_large"
    status = 413


class HookError(ServiceError):
    """A pre- or post-processing hook raised or returned the wrong shape."""


class PreprocessError(HookError):
    code = "preprocess_failed"


class PostprocessError(HookError):
    code = "postprocess_failed"


class ModelError(ServiceError):
    """A loaded model raised during predict or returned unusable scores."""

    code = "model_failed"
    cause = "model"


class UnavailableError(ServiceError):
    """The service cannot answer now; another replica (or a retry) may."""

    status = 503


class NotReadyError(UnavailableError):
    code = "not_ready"


class ModelTimeoutError(UnavailableError):
    """A model call (hooks included) was not answered within ``serving.model_timeout_s``."""

    code = "model_timeout"


class OverloadedError(UnavailableError):
    """``serving.max_model_calls`` calls are running (or stuck past their deadline) already."""

    code = "overloaded"


def describe(exc: BaseException, limit: int = 300) -> str:
    """A short one-line description of an exception for an error body."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
