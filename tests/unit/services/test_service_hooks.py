"""services/hooks.py + services/frames.py: a team's DataFrame hooks with declared columns.

A hook module is written to a temporary folder and imported by name, as the image imports
`services.team_hooks`; the model is a real scikit-learn pipeline saved by MLflow.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.config import ServiceConfig
from services.errors import ConfigError, InvalidInputError, PostprocessError, PreprocessError
from services.hooks import Column, RejectInput, load_hooks, postprocessor
from services.json_schema import example_request_row
from services.loading import LoadedModel, load_model
from services.openapi import build_spec
from services.predictor import Predictor
from tests import servicekit

FEATURES = servicekit.FEATURES
HOOKS = '''
import pandas as pd
from services.hooks import Column, RejectInput, postprocessor, preprocessor

@preprocessor(request=[
    Column(name="customer", type="string", example="c-1"),
    Column(name="radius_mm", type="double", example=12.0),
    Column(name="mean_texture", type="double", example=0.1),
    Column(name="mean_smoothness", type="double", example=0.2),
    Column(name="worst_area", type="double", required=False, example=3.0),
])
def preprocess(request):
    bad = request["radius_mm"] < 0
    if bad.any():
        raise RejectInput([(int(i), "radius_mm", "must not be negative") for i in request.index[bad]])
    out = request.assign(mean_radius=request["radius_mm"] / 10.0)
    out["worst_area"] = out["worst_area"].fillna(0.0)
    return out

@postprocessor(response=[Column(name="band", type="string"),
                         Column(name="customer_echo", type="string", required=False)])
def postprocess(request, answer):
    return pd.DataFrame({"band": answer["score"].map(lambda s: "hi" if s >= 0.5 else "lo"),
                         "customer_echo": request["customer"]})
'''


@pytest.fixture
def hook_module(tmp_path: Path) -> Iterator[Any]:
    """Write modules `bentoship_test_hooks_*` and import them; removed afterwards."""
    written: list[str] = []

    def write(source: str, name: str = "bentoship_test_hooks") -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    sys.path.insert(0, str(tmp_path))
    try:
        yield write
    finally:
        sys.path.remove(str(tmp_path))
        for name in written:
            sys.modules.pop(name, None)


def hooked_config(module: str, config_data: dict[str, Any]) -> ServiceConfig:
    found = load_hooks(module)
    data = servicekit.make_config(
        [{"name": "control", "model_tag": "m:v1", "registered_name": "m", "version": "1",
          "flavor": "sklearn", "weight": 100}],
        examples=[1.2, 0.1, 0.2, 3.0],
        routing={"salt": "s", "key_field": "customer"},
    ).model_dump()
    data["hooks"] = {"module": module, "preprocess": True, "postprocess": True,
                     "request": [c.model_dump() for c in found.request],
                     "response": [c.model_dump() for c in found.response]}
    return ServiceConfig.model_validate(data)


@pytest.fixture
def predictor(hook_module: Any, sklearn_dir: Path, config_data: dict[str, Any]) -> Predictor:
    config = hooked_config(hook_module(HOOKS), config_data)
    return Predictor.from_config(config, {"control": load_model(sklearn_dir, FEATURES)})


def test_requests_are_the_declared_fields_and_answers_gain_the_declared_columns(
    predictor: Predictor, sklearn_dir: Path
) -> None:
    rows = [{"customer": "a", "radius_mm": 5.0, "mean_texture": 0.3, "mean_smoothness": 0.1},
            {"customer": "b", "radius_mm": 25.0, "mean_texture": -1.0, "mean_smoothness": 0.4,
             "worst_area": 2.5}]
    out = predictor.predict_parsed({"rows": rows}).rows
    model = load_model(sklearn_dir, FEATURES)
    # What the hook derives, computed here independently, through the model's own answer.
    matrix = np.array([[0.5, 0.3, 0.1, 0.0], [2.5, -1.0, 0.4, 2.5]])
    expected = model.predict(matrix)
    for row, p in zip(out, expected):
        assert row["score"] == pytest.approx(p[1], abs=1e-12)
        assert row["band"] == ("hi" if p[1] >= 0.5 else "lo")
    assert [r["customer_echo"] for r in out] == ["a", "b"]
    assert set(out[0]) == {"prediction", "probabilities", "score", "band", "customer_echo",
                           "variant", "model_version"}


def test_the_declared_fields_are_validated_with_the_usual_4xx(predictor: Predictor) -> None:
    with pytest.raises(InvalidInputError) as info:
        predictor.predict_parsed({"rows": [{"customer": 3, "radius_mm": "x",
                                            "mean_texture": 0.1, "mean_radius": 1.0}]})
    fields = {(d["row"], d["field"]) for d in info.value.detail}
    # `mean_radius` is a model feature but not a field of this API; mean_smoothness is missing.
    assert fields >= {(0, "radius_mm"), (0, "mean_radius"), (0, "mean_smoothness")}
    assert info.value.status == 422


def test_a_hook_rejecting_rows_is_a_422_naming_row_and_field(predictor: Predictor) -> None:
    good = {"customer": "a", "radius_mm": 5.0, "mean_texture": 0.3, "mean_smoothness": 0.1}
    with pytest.raises(InvalidInputError) as info:
        predictor.predict_parsed({"rows": [good, {**good, "radius_mm": -1.0}]})
    assert info.value.to_body() == {"error": "invalid_input", "detail": [
        {"row": 1, "field": "radius_mm", "problem": "must not be negative"}]}


def test_the_spec_documents_the_hooks_fields_not_the_features(predictor: Predictor) -> None:
    schemas = build_spec(predictor.config)["components"]["schemas"]
    row = schemas["Row"]
    assert set(row["properties"]) == {"customer", "radius_mm", "mean_texture",
                                      "mean_smoothness", "worst_area"}
    assert row["required"] == ["customer", "radius_mm", "mean_texture", "mean_smoothness"]
    answer = schemas["PredictionRow"]
    assert answer["properties"]["band"]["type"] == "string"
    assert answer["properties"]["customer_echo"]["nullable"] is True
    assert "band" in answer["required"] and "customer_echo" not in answer["required"]
    assert example_request_row(predictor.config)["radius_mm"] == 12.0


@pytest.mark.parametrize(
    ("body", "error", "problem"),
    [
        ("return request.drop(columns=['mean_radius'])", PreprocessError,
         "the model needs this feature"),
        ("return request.head(1)", PreprocessError, "expected a DataFrame of 2 rows, got 1 rows"),
        ("return request.assign(mean_radius='big')", PreprocessError, "feature mean_radius"),
        ("raise KeyError('oops')", PreprocessError, "KeyError"),
    ],
)
def test_a_broken_preprocess_is_preprocess_failed(
    hook_module: Any, sklearn_dir: Path, config_data: dict[str, Any], body: str,
    error: type[Exception], problem: str,
) -> None:
    source = HOOKS.replace("    bad = request[\"radius_mm\"] < 0", f"    {body}\n    bad = 0", 1)
    source = source.replace('"radius_mm", type="double", example=12.0',
                            '"mean_radius", type="double", example=1.2')
    source = source.replace('request["radius_mm"] / 10.0', 'request["mean_radius"]')
    config = hooked_config(hook_module(source, "bentoship_test_hooks_pre"), config_data)
    predictor = Predictor.from_config(config, {"control": load_model(sklearn_dir, FEATURES)})
    rows = [{"customer": "a", "mean_radius": 5.0, "mean_texture": 0.3, "mean_smoothness": 0.1}] * 2
    with pytest.raises(error) as info:
        predictor.predict_parsed({"rows": rows})
    assert info.value.status == 500  # type: ignore[attr-defined]
    assert problem in str(info.value.detail)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        ("pd.DataFrame({'band': ['x'] * len(answer)})", "declared but not returned"),
        ("pd.DataFrame({'band': ['x'] * len(answer), 'customer_echo': None, 'extra': 1})",
         "returned but not declared"),
        ("pd.DataFrame({'band': [1] * len(answer), 'customer_echo': None})",
         "declared string: expected a string, got a number"),
        ("pd.DataFrame({'band': [None] * len(answer), 'customer_echo': None})",
         "declared required, returned empty"),
    ],
)
def test_a_postprocess_breaking_its_declaration_is_postprocess_failed(
    hook_module: Any, sklearn_dir: Path, config_data: dict[str, Any], returned: str, problem: str
) -> None:
    start = HOOKS.index("    return pd.DataFrame({\"band\"")
    source = HOOKS[:start] + f"    return {returned}\n"
    config = hooked_config(hook_module(source, "bentoship_test_hooks_post"), config_data)
    predictor = Predictor.from_config(config, {"control": load_model(sklearn_dir, FEATURES)})
    row = {"customer": "a", "radius_mm": 5.0, "mean_texture": 0.3, "mean_smoothness": 0.1}
    with pytest.raises(PostprocessError) as info:
        predictor.predict_parsed({"rows": [row]})
    assert problem in str(info.value.detail)


def test_a_module_that_changed_since_the_build_is_refused(
    hook_module: Any, sklearn_dir: Path, config_data: dict[str, Any]
) -> None:
    config = hooked_config(hook_module(HOOKS), config_data)
    changed = config.model_copy(update={"hooks": config.hooks.model_copy(  # type: ignore[union-attr]
        update={"response": (Column(name="band", type="string"),)})})
    with pytest.raises(ConfigError, match="differ from what this service was built with"):
        Predictor.from_config(changed, {"control": load_model(sklearn_dir, FEATURES)})


def test_declarations_that_cannot_work_are_refused_early(hook_module: Any) -> None:
    with pytest.raises(ValueError, match="service's own"):
        postprocessor(response=[Column(name="variant", type="string")])
    with pytest.raises(ValueError, match="at least one"):
        RejectInput([])
    name = hook_module("def postprocess(request, answer):\n    return answer\n", "bentoship_bare")
    with pytest.raises(ConfigError, match="must declare its response columns"):
        load_hooks(name)
    with pytest.raises(ConfigError, match="cannot import it"):
        load_hooks("bentoship_no_such_module")


def test_without_hooks_no_pandas_runs_per_request(
    sklearn_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = servicekit.make_config(
        [{"name": "control", "model_tag": "m:v1", "registered_name": "m", "version": "1",
          "flavor": "sklearn", "weight": 100}])
    model: LoadedModel = load_model(sklearn_dir, FEATURES)
    predictor = Predictor.from_config(config, {"control": model})
    import services.frames

    def forbidden(*_: Any, **__: Any) -> Any:
        raise AssertionError("the hook path ran without hooks")

    for name in ("request_frame", "run_preprocess", "run_postprocess"):
        monkeypatch.setattr(services.frames, name, forbidden)
    row = dict(zip(FEATURES, (0.1, 0.2, 0.3, 0.4)))
    assert predictor.predict_parsed({"rows": [row]}).rows[0]["prediction"] in (0, 1)
