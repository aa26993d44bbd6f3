"""A worked example of a team's hooks: triage on top of the demo breast-cancer classifier.

Build it with the demo models (`bentoship demo` first):

    bentoship build --model demo-classifier@champion --config docs/examples/bentoship.toml

The callers of this service are not the model's training pipeline, so the request is theirs:

- `patient_id` (not a feature) keeps a patient on one variant ([service] key_field);
- `clinic` (not a feature, optional) is where a high-risk patient is referred;
- the measurements, except `mean_area` and `worst_area`: those are derived features, the area
  of a circle of the measured radius, computed here rather than by every caller.

The answer keeps the model's own fields (`prediction`, `probabilities`, `score`) and adds the
business fields `risk_band`, `follow_up` and `refer_to`. In this dataset class 0 is malignant.
A row whose worst radius is below its mean radius is refused (422 naming the row and field).
"""

from __future__ import annotations

import math

import pandas as pd

from services.hooks import Column, RejectInput, postprocessor, preprocessor

FEATURES = (
    "mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness",
    "mean_compactness", "mean_concavity", "mean_concave_points", "mean_symmetry",
    "mean_fractal_dimension", "radius_error", "texture_error", "perimeter_error", "area_error",
    "smoothness_error", "compactness_error", "concavity_error", "concave_points_error",
    "symmetry_error", "fractal_dimension_error", "worst_radius", "worst_texture",
    "worst_perimeter", "worst_area", "worst_smoothness", "worst_compactness", "worst_concavity",
    "worst_concave_points", "worst_symmetry", "worst_fractal_dimension",
)
DERIVED = {"mean_area": "mean_radius", "worst_area": "worst_radius"}
EXAMPLES = {"mean_radius": 14.0, "worst_radius": 16.0, "mean_texture": 19.0,
            "worst_texture": 25.0, "mean_perimeter": 92.0, "worst_perimeter": 107.0}
HIGH, MEDIUM = 0.7, 0.3  # P(malignant) at or above which a patient is high / medium risk

REQUEST = [
    Column(name="patient_id", type="string", example="p-1042"),
    Column(name="clinic", type="string", required=False, example="north"),
    *(Column(name=f, type="double", example=EXAMPLES.get(f, 0.0))
      for f in FEATURES if f not in DERIVED),
]


@preprocessor(request=REQUEST)
def preprocess(request: pd.DataFrame) -> pd.DataFrame:
    too_small = request["worst_radius"] < request["mean_radius"]
    if too_small.any():
        raise RejectInput([(int(i), "worst_radius", "must be at least mean_radius")
                           for i in request.index[too_small]])
    features = request.copy()
    for area, radius in DERIVED.items():
        features[area] = math.pi * features[radius] ** 2
    return features[list(FEATURES)]


@postprocessor(response=[
    Column(name="risk_band", type="string", example="low"),
    Column(name="follow_up", type="boolean", example=False),
    Column(name="refer_to", type="string", required=False, example=None),
])
def postprocess(request: pd.DataFrame, answer: pd.DataFrame) -> pd.DataFrame:
    malignant = answer["probabilities"].map(lambda p: p["0"])
    band = pd.Series("low", index=answer.index)
    band[malignant >= MEDIUM] = "medium"
    band[malignant >= HIGH] = "high"
    refer = request["clinic"].where(band == "high", None)
    return pd.DataFrame({"risk_band": band, "follow_up": band != "low", "refer_to": refer})
