"""services/hooks.py: built-ins, custom hooks by name, and failures with stable codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.errors import ConfigError, PostprocessError, PreprocessError
from services.hooks import postprocess, preprocess, resolve_hook, run_postprocess, run_preprocess

FEATURES = ("a", "b")


def test_builtin_preprocess_is_identity() -> None:
    matrix = np.arange(6, dtype=float).reshape(3, 2)
    assert run_preprocess(preprocess, matrix, FEATURES) is matrix


def test_builtin_postprocess_thresholds_inclusively() -> None:
    rows = postprocess(np.array([0.2, 0.5, 0.93]), 0.5)
    assert rows == [
        {"prediction": 0, "score": 0.2},
        {"prediction": 1, "score": 0.5},
        {"prediction": 1, "score": 0.93},
    ]
    assert all(type(r["prediction"]) is int and type(r["score"]) is float for r in rows)


def test_threshold_is_configurable() -> None:
    assert [r["prediction"] for r in postprocess(np.array([0.2, 0.5, 0.93]), 0.9)] == [0, 0, 1]


def test_resolve_builtin_by_name() -> None:
    assert resolve_hook("services.hooks:postprocess", "postprocess") is postprocess


def test_resolve_custom_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_hooks.py").write_text("def scale(m, features):\n    return m * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = resolve_hook("my_hooks:scale", "preprocess")
    np.testing.assert_array_equal(
        run_preprocess(hook, np.ones((2, 2)), FEATURES), np.full((2, 2), 2.0)
    )


def test_unimportable_hook_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"bentoship.json preprocess: cannot import 'no_such_module' \(ModuleNotFoundError",
    ):
        resolve_hook("no_such_module:f", "preprocess")
    with pytest.raises(
        ConfigError, match=r"bentoship.json postprocess: 'services.hooks' has no callable 'nope'"
    ):
        resolve_hook("services.hooks:nope", "postprocess")


def test_preprocess_that_raises() -> None:
    def broken(matrix: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
        raise ValueError("log of a negative income")

    with pytest.raises(PreprocessError) as info:
        run_preprocess(broken, np.ones((1, 2)), FEATURES)
    assert info.value.status == 500
    assert info.value.to_body() == {
        "error": "preprocess_failed",
        "detail": [{"row": None, "field": None, "problem": "ValueError: log of a negative income"}],
    }


def test_preprocess_that_changes_the_shape() -> None:
    with pytest.raises(PreprocessError, match="wrong shape") as info:
        run_preprocess(lambda m, f: m[:, :1], np.ones((3, 2)), FEATURES)
    assert info.value.detail[0]["problem"] == "expected an array of shape (3, 2), got (3, 1)"


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        (lambda s, t: 1 / 0, "ZeroDivisionError: division by zero"),
        (lambda s, t: [{"p": 1}], "expected a list of 2 objects, got 1"),
        (lambda s, t: {"p": [1, 2]}, "expected a list of 2 objects, got dict"),
        (lambda s, t: [{"p": 1}, 7], "item 1: expected an object, got int"),
    ],
)
def test_postprocess_failures(hook: object, problem: str) -> None:
    with pytest.raises(PostprocessError) as info:
        run_postprocess(hook, np.array([0.1, 0.9]), 0.5)  # type: ignore[arg-type]
    assert info.value.code == "postprocess_failed"
    assert info.value.detail == [{"row": None, "field": None, "problem": problem}]
