"""A hook module that makes the demo classifier slow on request: the serving fault tests' model.

The request is the demo model's 30 features plus an optional ``delay_s``: the preprocess hook
sleeps for the largest ``delay_s`` of the batch (in the worker's model-call thread, like a hook
that calls a slow feature store), then hands the features to the model unchanged.
"""

from __future__ import annotations

import re
import time

import pandas as pd
from sklearn.datasets import load_breast_cancer

from services.hooks import Column, preprocessor

# The demo model's features (pipeline/models/demo.py names them so), from the dataset that
# scikit-learn, which the demo's sklearn model needs in the image anyway, ships.
FEATURES = tuple(re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
                 for name in load_breast_cancer().feature_names)


@preprocessor(request=[
    *(Column(name=f, type="double", example=1.0) for f in FEATURES),
    Column(name="delay_s", type="double", required=False, example=0.0),
])
def preprocess(request: pd.DataFrame) -> pd.DataFrame:
    delay = request["delay_s"].max() if "delay_s" in request else 0.0
    if pd.notna(delay) and delay > 0:
        time.sleep(float(delay))
    return request[list(FEATURES)]
