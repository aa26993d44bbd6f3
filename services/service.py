"""The BentoML service: wiring only.

At import it reads ``bentoship.json`` next to this file and declares one
``bentoml.models.BentoModel`` class attribute per variant (so ``bentoml build`` packs the
models into the Bento). In ``__init__`` (in each worker) it loads every model from its
``mlflow_model/`` folder, scores the configured examples through every variant, and only
then plugs the predictor into the mounted Starlette app; ``__is_ready__`` (BentoML's
readiness hook behind ``/readyz``) is false until that has happened.

It runs ``serving.workers`` worker processes (``BENTOSHIP_WORKERS``), by default one per CPU the
container is given (:func:`services.cpus.available_cpus`, cgroup-aware). Every worker loads its
own models; a worker that dies takes only its own requests with it (BentoML restarts it, the
others keep answering, ``/readyz`` included), and metrics are summed over the workers (BentoML's
prometheus multiprocess directory).

Serve a build context with ``bentoml serve services.service:Bentoship`` from its root.
This module must not import ``pipeline``, ``docker`` or ``mlflow`` (a test checks).
"""

from __future__ import annotations

import gc
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import bentoml

from services.app import AppState, create_app
from services.config import CONFIG_FILENAME, ServiceConfig, Variant, load_config
from services.cpus import available_cpus
from services.errors import ModelLoadError

if TYPE_CHECKING:
    from services.loading import LoadedModel
    from services.metrics import Metrics
    from services.predictor import Predictor

logger = logging.getLogger("bentoship.service")

CONFIG: ServiceConfig = load_config(Path(__file__).with_name(CONFIG_FILENAME))
WORKERS: int = CONFIG.serving.workers or available_cpus()
STATE = AppState()
APP = create_app(CONFIG, STATE)


def model_attribute(variant: Variant) -> str:
    return "model_" + re.sub(r"\W", "_", variant.name)


FULL_COLLECTION_EVERY = 100  # middle-generation collections per full one (Python's default: 10)


class _Bentoship:
    """Serves the control (and optional treatment) model of one bentoship config."""

    def __init__(self) -> None:
        # Importing the models' libraries and loading the models allocate ~200,000 objects
        # that live as long as the worker and no garbage worth a collection: the collections
        # they triggered were ~12% of a worker's start (0.2 s of importing skops and XGBoost).
        # The collector is on again below, after one full collection.
        gc.disable()
        try:
            STATE.activate(*self._load())
        finally:
            gc.enable()
        # Everything loaded so far (BentoML, numpy, pydantic, the models: ~200,000 objects the
        # collector tracks) lives as long as the worker. A full collection walked it all: about
        # 300 ms on a loaded 2-core machine with the event loop stopped, every request in flight
        # waiting (the 32-client p99). Frozen, collections only walk what requests allocate.
        gc.collect()
        gc.freeze()
        # What requests keep alive for a while (BentoML keeps a timer, a future and a bound
        # method per request for its 30 s traffic timeout) still made full collections long:
        # 19 in a 4-minute benchmark run, 38 ms on average and up to 137 ms, the loop stopped.
        # One full collection per 100 of the middle generation instead of 10: 3 in the same
        # run. Requests' objects are freed by reference counting; only cycles wait longer.
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
        logger.info("bentoship %s ready (%s)", CONFIG.name, CONFIG.image_tag)

    def _load(self) -> tuple[Predictor, Metrics]:
        """The predictor over every loaded and warmed-up model, and the worker's metrics."""
        # Imported here, in the worker: BentoML's supervisor imports this module too, only to
        # read the service's declaration, and numpy and the models' libraries would cost its
        # start (before any worker is spawned) without being used there.
        from services.loading import MODEL_SUBDIR, import_loaders, load_variant
        from services.metrics import create_metrics
        from services.predictor import Predictor

        models: dict[str, LoadedModel] = {}
        import_loaders({v.flavor for v in CONFIG.variants}, hooks=CONFIG.hooks is not None)
        for variant in CONFIG.variants:
            stored: bentoml.Model = getattr(self, model_attribute(variant))
            _check_metadata(variant, stored)
            models[variant.name] = load_variant(CONFIG, Path(stored.path) / MODEL_SUBDIR)
            logger.info(
                "variant %s: %s loaded with %s",
                variant.name,
                variant.model_tag,
                models[variant.name].loader,
            )
        predictor = Predictor.from_config(CONFIG, models)
        predictor.warm_up()
        return predictor, create_metrics()

    def __is_ready__(self) -> bool:
        return STATE.ready


def _check_metadata(variant: Variant, stored: bentoml.Model) -> None:
    version = stored.info.metadata.get("version")
    if version is not None and str(version) != variant.version:
        registered = stored.info.metadata.get("registered_name")
        raise ModelLoadError(
            f"BentoML model {variant.model_tag} holds version {version!r} of {registered!r}, "
            f"bentoship.json says {variant.version!r}"
        )


# Model attributes depend on the config, so they are set before decorating, not in the body:
# BentoML collects `BentoModel` class attributes when the class is decorated.
for _variant in CONFIG.variants:
    setattr(_Bentoship, model_attribute(_variant), bentoml.models.BentoModel(_variant.model_tag))

# BentoML's access log costs ~0.5 ms a request (a quarter of a one-row prediction) and
# bentoship_* metrics already count every request; re-enable it with BentoML's own config
# if you need per-request lines.
Bentoship = bentoml.service(
    name=CONFIG.name,
    workers=WORKERS,
    # BentoML's own request timeout stays above the model-call deadline, so a slow model is
    # answered with our 503 model_timeout, not BentoML's bare error.
    traffic={"timeout": max(30, math.ceil(CONFIG.serving.model_timeout_s) + 5)},
    logging={"access": {"enabled": False}},
    # BentoML's request metrics (bentoml_service_*) are five locked writes into multiprocess
    # files a request, and nothing reads them; the bentoship_* metrics count every request.
    # This also drops BentoML's /metrics route: the mounted app serves /metrics instead.
    metrics={"enabled": False},
    # BentoML wraps every request in OpenTelemetry middleware; with the default sample rate of
    # 0 it records nothing yet costs ~0.5 ms of CPU per request (27% of the event loop's busy
    # time in benchmarks/serving). Whoever turns tracing on must take /predict out of this list.
    tracing={"excluded_urls": ["/predict"]},
)(bentoml.asgi_app(APP, path="/")(_Bentoship))
