"""The naive BentoML service: what the BentoML docs lead to for an MLflow model.

`bentoml.mlflow.import_model` of the registry version, `bentoml.mlflow.load_model` (an
`mlflow.pyfunc` model), and one `@bentoml.api` taking a pandas DataFrame (JSON body
`{"df": [{column: value, ...}, ...]}`, BentoML's default `records` orientation). BentoML's
defaults otherwise, access log included; one worker and no adaptive batching
(`batchable=True` with a DataFrame argument is broken in BentoML 1.4.39, see
/work/shared/ENVIRONMENT.md).

    python naive.py import NAME MODEL_URI   # import into $BENTOML_HOME, print the tag
    BENTOSHIP_BENCH_NAIVE_MODEL=TAG bentoml serve naive:NaiveMlflow --working-dir DIR

This file is copied into a temporary folder and served from there.
"""

from __future__ import annotations

import os
import sys

import bentoml
import numpy as np
import pandas as pd

MODEL_ENV = "BENTOSHIP_BENCH_NAIVE_MODEL"


if __name__ == "__main__":
    _, command, name, uri = sys.argv
    assert command == "import", sys.argv
    print(bentoml.mlflow.import_model(name, uri).tag)
    sys.exit(0)


@bentoml.service(workers=1)
class NaiveMlflow:
    bento_model = bentoml.models.BentoModel(os.environ[MODEL_ENV])

    def __init__(self) -> None:
        self.model = bentoml.mlflow.load_model(self.bento_model)

    @bentoml.api
    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict(df))
