"""services/config.py: bentoship.json as the pipeline writes it, and what a bad one says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from services.config import CONFIG_FILENAME, ServiceConfig, load_config
from services.errors import ConfigError


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / CONFIG_FILENAME
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def message_for(tmp_path: Path, data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    return str(info.value)


def test_contract_example_loads_with_defaults(tmp_path: Path, config_data: dict[str, Any]) -> None:
    del config_data["max_rows"], config_data["allow_pickle"], config_data["threshold"]
    config = load_config(write(tmp_path, config_data))
    assert config.max_rows == 1000
    assert config.allow_pickle is False
    assert config.threshold == 0.5
    assert config.hooks is None and not config.preprocess and not config.postprocess
    assert config.trusted_types == ()
    assert config.output.binary and config.output.keys == ("0", "1")
    assert [v.name for v in config.variants] == ["control", "treatment"]
    assert config.feature_names == ("mean_radius",)
    assert config.control.version == "1"


def test_what_the_pipeline_writes_is_what_the_service_reads(
    tmp_path: Path, config_data: dict[str, Any]
) -> None:
    config = ServiceConfig.model_validate(config_data)
    path = tmp_path / CONFIG_FILENAME
    path.write_text(config.model_dump_json())
    assert load_config(path) == config


def test_config_is_frozen(config_data: dict[str, Any]) -> None:
    config = ServiceConfig.model_validate(config_data)
    with pytest.raises(pydantic.ValidationError):
        config.max_rows = 5  # type: ignore[misc]


def test_weights_must_sum_to_100(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["variants"][1]["weight"] = 20
    message = message_for(tmp_path, config_data)
    assert str(tmp_path / CONFIG_FILENAME) in message
    assert "weights must sum to 100, got 110 (control=90, treatment=20)" in message


def test_negative_weight_names_the_key(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["variants"][0]["weight"] = -10
    assert "variants[0].weight: Input should be greater than or equal to 0" in message_for(
        tmp_path, config_data
    )


def test_variant_names_must_be_unique(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["variants"][1]["name"] = "control"
    assert "variants: names must be unique" in message_for(tmp_path, config_data)


def test_one_variant_is_fine_three_are_not(tmp_path: Path, config_data: dict[str, Any]) -> None:
    single = {**config_data, "variants": [{**config_data["variants"][0], "weight": 100}]}
    assert len(ServiceConfig.model_validate(single).variants) == 1
    third = {**config_data["variants"][1], "name": "other", "model_tag": "x:v3", "weight": 0}
    config_data["variants"].append(third)
    assert "variants: expected 1 or 2 (a control and an optional treatment), got 3" in message_for(
        tmp_path, config_data
    )


def test_unknown_key_is_refused(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["routing"]["sticky"] = True
    assert "routing.sticky: unknown key" in message_for(tmp_path, config_data)


def test_feature_type_lists_allowed_values(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["features"][0]["type"] = "int"
    message = message_for(tmp_path, config_data)
    assert "features[0].type" in message
    for allowed in ("'double'", "'float'", "'long'", "'integer'", "'boolean'", "'string'"):
        assert allowed in message


def test_example_must_fit_the_type(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["features"][0]["example"] = "big"
    assert (
        "example 'big' does not fit type 'double': expected a number, got a string"
        in message_for(tmp_path, config_data)
    )


def test_hook_module_must_be_a_module_name(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["hooks"] = {"module": "services/my_hooks.py", "preprocess": True}
    assert (
        "hooks.module: 'services/my_hooks.py' must be an importable module name"
        in message_for(tmp_path, config_data)
    )


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ({"task": "classification", "classes": [1]}, "two or more distinct classes"),
        ({"task": "classification", "classes": [1, 1]}, "two or more distinct classes"),
        ({"task": "classification", "classes": [1, "a"]}, "all integers or all strings"),
        ({"task": "regression", "classes": [0, 1]}, "a regressor has no classes"),
        ({"task": "regression", "targets": 2, "target_names": ["a"]}, "must name each of the 2"),
        ({"task": "ranking"}, "output.task"),
    ],
)
def test_output_must_be_consistent(
    tmp_path: Path, config_data: dict[str, Any], output: dict[str, Any], problem: str
) -> None:
    config_data["output"] = output
    assert problem in message_for(tmp_path, config_data)


def test_variant_name_shape(tmp_path: Path, config_data: dict[str, Any]) -> None:
    config_data["variants"][1]["name"] = "Treatment B"
    assert "variants[1].name: variant name 'Treatment B' must match" in message_for(
        tmp_path, config_data
    )


def test_headers_are_lower_cased(config_data: dict[str, Any]) -> None:
    config_data["routing"]["override_header"] = "X-Bentoship-Variant"
    assert (
        ServiceConfig.model_validate(config_data).routing.override_header == "x-bentoship-variant"
    )


def test_missing_file_says_who_writes_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bentoship.json: not found\. The pipeline writes"):
        load_config(tmp_path / CONFIG_FILENAME)


def test_invalid_json_gives_the_position(tmp_path: Path) -> None:
    message = message_for(tmp_path, '{"name": "x",\n  oops}')
    assert "not valid JSON at line 2 column 3" in message
