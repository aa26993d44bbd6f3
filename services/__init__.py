"""bentoship's service template: runs inside the image, never imports ``pipeline``.

Public modules (import them directly; this package imports nothing so that the pure parts
load without BentoML):

- ``services.config``: ``ServiceConfig`` / ``load_config`` (contract 2, ``bentoship.json``)
- ``services.errors``: ``ServiceError`` and its tree (stable codes and HTTP statuses)
- ``services.schema``: request parsing and validation
- ``services.json_schema``: JSON Schemas of rows, responses, errors; example rows
- ``services.routing``: sticky A/B assignment
- ``services.hooks``: built-in pre/post-processing, custom hook loading
- ``services.loading``: ``load_model`` -> ``LoadedModel.predict_scores``
- ``services.predictor``: one request from bytes to response rows
- ``services.metrics``: the four Prometheus metrics (contract 5)
- ``services.openapi``: ``build_spec(config)``
- ``services.app``: the Starlette app mounted into BentoML
- ``services.service``: the ``@bentoml.service`` (needs ``bentoship.json`` next to it)
"""
