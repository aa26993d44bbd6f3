"""The service's Prometheus metrics (contract 5), exactly these names:

==========================================  =========  ====================================
``bentoship_responses_total``               counter    ``status``, ``cause``
``bentoship_requests_total``                counter    ``variant``, ``status``
``bentoship_request_duration_seconds``      histogram  ``variant``
``bentoship_rows_per_request``              histogram  ``variant``
``bentoship_predictions_total``             counter    ``variant``, ``label`` (classifiers)
``bentoship_prediction_confidence``         histogram  ``variant`` (classifiers: top probability)
``bentoship_prediction_score``              histogram  ``variant`` (binary: P(positive class))
``bentoship_prediction_value``              histogram  ``variant``, ``target`` (regressors)
``bentoship_batch_rows``                    histogram  ``variant`` (with ``batching.enabled``)
``bentoship_batch_requests``                histogram  ``variant`` (with ``batching.enabled``)
==========================================  =========  ====================================

With batching on (``services/batching.py``), every model call of a variant observes the rows
and the requests it scored together; without it they are never observed, so never exported.

What the models answer, per variant, for every task kind: a classifier's labels (every row
counted) and its top probability; a binary classifier's score; a regressor's values (``target``
is the output column's name, or ``prediction`` for a single value). A canary compares these
between baseline and canary.

``bentoship_responses_total`` counts every answer to ``/predict`` exactly once: ``cause`` is
``none`` for a 2xx, else who has to act on the error (``caller``, ``model``, ``server``; see
``services/errors.py``). It is the denominator of a canary's error ratios, which must not count a
request twice because its rows reached both variants.

A request whose rows went to both variants counts once for each variant (its duration is
observed for both, its rows split between them).

The histograms of answers observe every row. In BentoML's multiprocess mode every write is a
locked write to a memory-mapped file (4-25 us), and ``Histogram.observe`` makes two a value
(its bucket and the sum): a 100-row batch observed row by row cost more than scoring it. So a
request's values are observed together (:func:`observe_many`): bucket counts from one
``numpy.searchsorted``, then one write per bucket that got values and one for the sum, at most
the bucket count whatever the rows. A request refused before routing (bad input, too many
rows) is labelled ``variant="none"``; a model or hook failure carries the variant it happened
in. ``status`` is the HTTP code as a string.

They are plain ``prometheus_client`` metrics in BentoML's multiprocess directory
(``PROMETHEUS_MULTIPROC_DIR``, which ``bentoml serve`` gives every worker), and the service's
own ``/metrics`` (:func:`exposition`) sums every worker's files, dead ones included.
BentoML's own metrics (``bentoml_service_*``) are turned off in ``service.py``: they cost
five more locked file writes a request and nothing reads them. ``prometheus_client`` is
imported only inside functions: BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` in the worker
*after* importing the service module, and a metric created before that would never reach
``/metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.answers import VariantAnswer
from services.config import Output

UNROUTED = "none"
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
ROWS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
# A regressor's values can have any scale: buckets symmetric in decades; the mean per variant
# (``_sum`` / ``_count``) is what a canary compares.
VALUE_BUCKETS = (-1e4, -1e3, -100.0, -10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4)

METRIC_NAMES = (
    "bentoship_responses_total",
    "bentoship_requests_total",
    "bentoship_request_duration_seconds",
    "bentoship_rows_per_request",
    "bentoship_predictions_total",
    "bentoship_prediction_confidence",
    "bentoship_prediction_score",
    "bentoship_prediction_value",
)


BATCH_METRIC_NAMES = ("bentoship_batch_rows", "bentoship_batch_requests")
BATCH_REQUESTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

SUCCESS_CAUSE = "none"


@dataclass(frozen=True)
class Metrics:
    responses: Any
    requests: Any
    duration: Any
    rows: Any
    predictions: Any
    confidence: Any
    score: Any
    value: Any
    batch_rows: Any = None
    batch_requests: Any = None
    # (metric, label values) -> its labelled child: `labels()` takes a lock and checks its
    # arguments every call, about 5 us each, seven times a request. Label values are few
    # (variants, classes, targets, statuses), so this stays small.
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)`` (values in the metric's label order), created once."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def record_batch(self, variant: str, rows: int, requests: int) -> None:
        """One batched model call of ``variant``: the rows and requests it scored together."""
        if self.batch_rows is not None:
            self._child(self.batch_rows, variant).observe(rows)
            self._child(self.batch_requests, variant).observe(requests)

    def record_success(
        self, duration: float, answers: Mapping[str, VariantAnswer], output: Output
    ) -> None:
        child = self._child
        child(self.responses, "200", SUCCESS_CAUSE).inc()
        for variant, answer in answers.items():
            child(self.requests, variant, "200").inc()
            child(self.duration, variant).observe(duration)
            child(self.rows, variant).observe(len(answer.values))
            if answer.label_index is not None:
                counts = np.bincount(answer.label_index, minlength=len(output.classes))
                for key, count in zip(output.keys, counts.tolist()):
                    if count:
                        child(self.predictions, variant, key).inc(count)
                observe_many(child(self.confidence, variant), answer.values.max(axis=1))
                if output.binary:
                    observe_many(child(self.score, variant), answer.values[:, 1])
            else:
                for j, name in enumerate(output.target_labels):
                    observe_many(child(self.value, variant, name), answer.values[:, j])

    def record_failure(
        self, duration: float, status: int, variant: str | None, cause: str
    ) -> None:
        code = str(status)
        self._child(self.responses, code, cause).inc()
        label = variant or UNROUTED
        self._child(self.requests, label, code).inc()
        self._child(self.duration, label).observe(duration)


def observe_many(histogram: Any, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every ``v`` in ``values``, in a few writes.

    ``histogram`` is a labelled ``prometheus_client`` Histogram child; this reads its bucket
    bounds and writes its bucket and sum values (``_upper_bounds``, ``_buckets``, ``_sum``:
    prometheus_client's own attributes, pinned by a unit test against ``observe``). As in
    ``observe``, a value falls in the first bucket whose bound is >= it, and a NaN is added to
    the sum and to no bucket.
    """
    if len(values) == 1:  # the usual online request: observe's two writes are the fewest
        histogram.observe(float(values[0]))
        return
    bounds = histogram._upper_bounds
    indices = np.searchsorted(bounds, values, side="left")  # NaN sorts past +Inf: no bucket
    counts = np.bincount(indices, minlength=len(bounds) + 1)[: len(bounds)]
    histogram._sum.inc(float(values.sum()))
    buckets = histogram._buckets
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))


_DEFAULT: list[Metrics] = []  # the metrics in prometheus' global registry, created once


def create_metrics(registry: Any = None) -> Metrics:
    """The metrics in ``registry``; by default prometheus' global one (created once)."""
    import prometheus_client

    if registry is None:
        if not _DEFAULT:
            _DEFAULT.append(_register(prometheus_client, prometheus_client.REGISTRY))
        return _DEFAULT[0]
    return _register(prometheus_client, registry)


def _register(prometheus_client: Any, registry: Any) -> Metrics:
    return Metrics(
        responses=prometheus_client.Counter(
            "bentoship_responses",  # exposed as bentoship_responses_total
            "Answers to /predict, each counted once, by HTTP status and who caused an error.",
            ["status", "cause"],
            registry=registry,
        ),
        requests=prometheus_client.Counter(
            "bentoship_requests",  # exposed as bentoship_requests_total
            "Prediction requests by variant and HTTP status.",
            ["variant", "status"],
            registry=registry,
        ),
        duration=prometheus_client.Histogram(
            "bentoship_request_duration_seconds",
            "Time from request received to response ready, by variant.",
            ["variant"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        ),
        rows=prometheus_client.Histogram(
            "bentoship_rows_per_request",
            "Rows a request sent to a variant.",
            ["variant"],
            buckets=ROWS_BUCKETS,
            registry=registry,
        ),
        predictions=prometheus_client.Counter(
            "bentoship_predictions",  # exposed as bentoship_predictions_total
            "Rows answered with each class label, by variant (classifiers).",
            ["variant", "label"],
            registry=registry,
        ),
        confidence=prometheus_client.Histogram(
            "bentoship_prediction_confidence",
            "Probability of the predicted class, by variant (classifiers).",
            ["variant"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        ),
        score=prometheus_client.Histogram(
            "bentoship_prediction_score",
            "Probability of the positive class, by variant (binary classifiers).",
            ["variant"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        ),
        value=prometheus_client.Histogram(
            "bentoship_prediction_value",
            "Predicted values, by variant and target (regressors).",
            ["variant", "target"],
            buckets=VALUE_BUCKETS,
            registry=registry,
        ),
        batch_rows=prometheus_client.Histogram(
            "bentoship_batch_rows",
            "Rows scored in one model call, by variant (adaptive batching).",
            ["variant"],
            buckets=ROWS_BUCKETS,
            registry=registry,
        ),
        batch_requests=prometheus_client.Histogram(
            "bentoship_batch_requests",
            "Requests scored together in one model call, by variant (adaptive batching).",
            ["variant"],
            buckets=BATCH_REQUESTS_BUCKETS,
            registry=registry,
        ),
    )


def exposition() -> tuple[bytes, str]:
    """The ``/metrics`` page and its content type: every worker's metrics summed from the
    multiprocess directory, or this process' registry when there is none (in-process tests)."""
    import prometheus_client
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    try:
        multiprocess.MultiProcessCollector(registry)  # reads PROMETHEUS_MULTIPROC_DIR
    except ValueError:  # no multiprocess directory: not under `bentoml serve`
        return prometheus_client.generate_latest(), prometheus_client.CONTENT_TYPE_LATEST
    families = list(registry.collect())
    for family in families:
        if family.type == "histogram":  # buckets in order, then count and sum, per label set
            family.samples.sort(key=_histogram_order)
    return (prometheus_client.generate_latest(_Families(families)),
            prometheus_client.CONTENT_TYPE_LATEST)


class _Families:
    """Already collected metric families, in the shape ``generate_latest`` reads."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> list[Any]:
        return self._families


_SUFFIX_ORDER = {"_bucket": 0, "_count": 1, "_sum": 2}


def _histogram_order(sample: Any) -> tuple[tuple[tuple[str, str], ...], int, float]:
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    suffix = next((rank for end, rank in _SUFFIX_ORDER.items() if sample.name.endswith(end)), 3)
    return labels, suffix, float(sample.labels.get("le", 0))
