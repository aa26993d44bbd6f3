"""The floor: the least a Python HTTP endpoint can do for this model.

A plain Starlette app on uvicorn (one process, access log off, like the service), orjson in
and out, the columns taken from the MLflow signature, and the native booster called
in-process with `inplace_predict` (nthread 1, as services/loading.py does). No validation,
no routing, no metrics: anything the service adds on top of this is its overhead.

    python floor.py MLFLOW_MODEL_DIR PORT

Takes `{"rows": [{column: value, ...}, ...]}`, answers `{"rows": [{"prediction", "score"}]}`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import orjson
import uvicorn
import xgboost
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(model_dir: Path) -> Starlette:
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    columns = [spec["name"] for spec in json.loads(mlmodel["signature"]["inputs"])]
    booster = xgboost.Booster(model_file=str(model_dir / mlmodel["flavors"]["xgboost"]["data"]))
    booster.set_param({"nthread": 1})

    async def predict(request: Request) -> Response:
        rows = orjson.loads(await request.body())["rows"]
        matrix = np.array([[row[c] for c in columns] for row in rows], dtype=np.float64)
        scores = booster.inplace_predict(matrix).tolist()
        out = [{"prediction": int(s >= 0.5), "score": s} for s in scores]
        return Response(orjson.dumps({"rows": out}), media_type="application/json")

    async def ping(request: Request) -> Response:
        return Response(b"ok")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/ping", ping)])


if __name__ == "__main__":
    app = create_app(Path(sys.argv[1]))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                access_log=False)
