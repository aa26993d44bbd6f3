"""ONNX graphs (``model.onnx``, with any external-data files beside it), run by onnxruntime.

One ``InferenceSession`` on the ``CPUExecutionProvider`` with one intra- and one inter-op
thread (one-row calls are the common case; threads on a shared 2-core machine only cost).
The flavor's ``providers`` and ``onnx_session_options`` are not used: the image has no GPU.

Inputs, as the session declares them:

- one tensor ``(n, len(columns))``: the matrix, cast to the input's element type (``float``
  for skl2onnx's ``FloatTensorType``); string columns are refused;
- or one input per column, named like the columns, each ``(n, 1)`` or ``(n,)``, each column
  cast to its input's element type (a string input takes a string column, and only that).

A fixed batch dimension of 1 (common in exports from deep-learning frameworks) is run one row
at a time; any other fixed batch size is refused.

Outputs:

- a sequence of maps (skl2onnx's ``ZipMap``, its default): a classifier whose classes are the
  ``ZipMap`` node's ``classlabels_int64s``/``classlabels_strings``, in that order;
- a label tensor and a float ``(n, k)`` probability tensor (``zipmap=False``): a classifier
  whose classes are found by following the label output back through ``Identity``/``Cast``/
  ``Reshape``-like nodes to the node that made it: an ``ai.onnx.ml`` classifier node
  (``LinearClassifier``, ``TreeEnsembleClassifier``, ``SVMClassifier``: their ``classlabels_*``
  attributes order their probabilities), or an ``ArrayFeatureExtractor``/``Gather`` picking
  the arg-max from a constant array of classes (skl2onnx's ``MLPClassifier``, for one);
- a single float tensor ``(n,)`` or ``(n, t)``: a regressor with ``t`` targets.

Anything else is refused, saying what the graph has. Class labels are read from the graph with
the ``onnx`` package, loading no external tensor data beyond a class array stored there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.errors import ModelLoadError, describe
from services.flavors import Loaded, ModelOutput, class_labels

Feed = Callable[[np.ndarray], dict[str, np.ndarray]]
Convert = Callable[[list[Any]], np.ndarray]

_NUMERIC: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_FLOATS = ("tensor(float)", "tensor(double)", "tensor(float16)")
_STRING = "tensor(string)"
# Nodes a label passes through unchanged (but for its type) on its way to the graph's output.
_PASS_THROUGH = ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
_LABEL_ATTRIBUTES = ("classlabels_strings", "classlabels_int64s", "classlabels_ints")
_ONNX_STRING = 8  # onnx.TensorProto.STRING, as in a Cast's `to`


def load(
    model_dir: Path,
    conf: dict[str, Any],
    columns: tuple[str, ...],
    column_types: tuple[str, ...],
) -> Loaded:
    """Load the ``onnx`` flavor's graph from ``model_dir`` for ``columns`` (in order)."""
    model_file = model_dir / str(conf.get("data", "model.onnx"))
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(
            f"{model_file}: onnxruntime cannot be imported in this image ({describe(exc)})"
        ) from exc
    if not model_file.is_file():
        raise ModelLoadError(f"{model_file}: not found (the onnx flavor's data file)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        # From the path, so that external-data files resolve next to it.
        session = onnxruntime.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelLoadError(
            f"{model_file}: onnxruntime could not load it ({describe(exc)})"
        ) from exc

    feed, one_row = _feeder(model_file, session.get_inputs(), columns, column_types)
    output, names, convert, kind = _outputs(model_file, session.get_outputs())

    def score(matrix: np.ndarray) -> np.ndarray:
        return convert(session.run(names, feed(matrix)))

    def row_by_row(matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] == 0:
            return np.zeros((0, output.width))
        return np.concatenate([score(matrix[i : i + 1]) for i in range(matrix.shape[0])])

    how = f"onnxruntime CPU ({model_file.name}, {kind}{', one row per run' if one_row else ''})"
    return Loaded(row_by_row if one_row else score, output, how)


# --- inputs -------------------------------------------------------------------------------


def _describe(args: Sequence[Any]) -> str:
    return ", ".join(f"{a.name} {a.type} {list(a.shape)}" for a in args) or "none"


def _batch_of_one(model_file: Path, inputs: Sequence[Any]) -> bool:
    """Whether the inputs fix the batch dimension at 1; refuses any other fixed size."""
    fixed = {a.shape[0] for a in inputs if a.shape and isinstance(a.shape[0], int)}
    if fixed - {1}:
        raise ModelLoadError(
            f"{model_file}: the graph fixes its batch size ({_describe(inputs)}); "
            "bentoship runs graphs with a free batch dimension, or a batch of 1"
        )
    return bool(fixed)


def _feeder(
    model_file: Path,
    inputs: Sequence[Any],
    columns: tuple[str, ...],
    column_types: tuple[str, ...],
) -> tuple[Feed, bool]:
    names = [a.name for a in inputs]
    if len(inputs) == 1 and len(inputs[0].shape) == 2:
        (tensor,) = inputs
        width = tensor.shape[1]
        if isinstance(width, int) and width != len(columns):
            raise ModelLoadError(
                f"{model_file}: the graph's input {tensor.name} takes {width} columns "
                f"({tensor.type} {list(tensor.shape)}), the signature lists {len(columns)} "
                f"({list(columns)})"
            )
        dtype = _NUMERIC.get(tensor.type)
        if dtype is None:
            raise ModelLoadError(
                f"{model_file}: the graph's input {tensor.name} is {tensor.type}; a single "
                "input must be a numeric tensor"
            )
        strings = [c for c, t in zip(columns, column_types) if t == "string"]
        if strings:
            raise ModelLoadError(
                f"{model_file}: the graph's single input {tensor.name} ({tensor.type}) needs "
                f"numeric columns, got string ones {strings}"
            )

        def whole(matrix: np.ndarray) -> dict[str, np.ndarray]:
            return {tensor.name: matrix.astype(dtype, copy=False)}

        return whole, _batch_of_one(model_file, inputs)

    if sorted(names) == sorted(columns):
        casts = [_column_cast(model_file, a, column_types[columns.index(a.name)]) for a in inputs]
        plan = [(a.name, columns.index(a.name), cast) for a, cast in zip(inputs, casts)]

        def per_column(matrix: np.ndarray) -> dict[str, np.ndarray]:
            return {name: cast(matrix[:, j]) for name, j, cast in plan}

        return per_column, _batch_of_one(model_file, inputs)

    raise ModelLoadError(
        f"{model_file}: cannot feed the graph's inputs ({_describe(inputs)}) from the signature's "
        f"{len(columns)} columns {list(columns)}: bentoship feeds one (n, {len(columns)}) tensor, "
        "or one (n, 1) input per column named like the column"
    )


def _column_cast(
    model_file: Path, arg: Any, column_type: str
) -> Callable[[np.ndarray], np.ndarray]:
    shape = list(arg.shape)
    if not _is_column(shape):
        raise ModelLoadError(
            f"{model_file}: the graph's input {arg.name} is {arg.type} {shape}; a column's "
            "input must be (n, 1) or (n,)"
        )
    rows = (-1, 1) if len(shape) == 2 else (-1,)
    if arg.type == _STRING:
        if column_type != "string":
            raise ModelLoadError(
                f"{model_file}: the graph's input {arg.name} takes strings, the signature's "
                f"column {arg.name} is {column_type}"
            )

        def text(column: np.ndarray) -> np.ndarray:
            return column.astype(object, copy=False).reshape(rows)

        return text
    dtype = _NUMERIC.get(arg.type)
    if dtype is None or column_type == "string":
        raise ModelLoadError(
            f"{model_file}: the graph's input {arg.name} is {arg.type}, the signature's column "
            f"{arg.name} is {column_type}: bentoship cannot feed it"
        )

    def number(column: np.ndarray) -> np.ndarray:
        return column.astype(dtype).reshape(rows)

    return number


# --- outputs ------------------------------------------------------------------------------


def _outputs(
    model_file: Path, outputs: Sequence[Any]
) -> tuple[ModelOutput, list[str], Convert, str]:
    """What the graph answers, the outputs to fetch, and how to turn them into scores."""
    maps = [o for o in outputs if o.type.startswith("seq(map(")]
    if len(maps) == 1:
        zipped = maps[0]
        keys = _zipmap_keys(model_file, zipped.name)

        def from_maps(results: list[Any]) -> np.ndarray:
            return np.array([[row[k] for k in keys] for row in results[0]], dtype=np.float64)

        output = ModelOutput("classification", class_labels(keys))
        return output, [zipped.name], from_maps, f"classifier, {len(keys)} classes from ZipMap"

    tensors = [o for o in outputs if o.type.startswith("tensor(")]
    if len(outputs) == 2 and len(tensors) == 2:
        probabilities = [o for o in tensors if o.type in _FLOATS and len(o.shape) == 2]
        probabilities = [o for o in probabilities if o.shape[1] != 1] or probabilities
        chosen = {o.name for o in probabilities}
        labels = [o for o in tensors if o.name not in chosen and _is_column(o.shape)]
        if len(probabilities) == 1 and len(labels) == 1:
            return _classifier(model_file, probabilities[0], labels[0])

    if len(outputs) == 1 and outputs[0].type in _FLOATS:
        (value,) = outputs
        shape = list(value.shape)
        targets = shape[1] if len(shape) == 2 else 1
        if len(shape) not in (1, 2) or not isinstance(targets, int):
            raise ModelLoadError(
                f"{model_file}: the graph's output {value.name} is {value.type} {shape}; a "
                "regressor's output must be (n,) or (n, t) with a fixed t"
            )

        def values(results: list[Any]) -> np.ndarray:
            return np.asarray(results[0], dtype=np.float64).reshape(-1, targets)

        output = ModelOutput("regression", targets=targets)
        return output, [value.name], values, f"regressor, {targets} target(s)"

    raise ModelLoadError(
        f"{model_file}: cannot tell what the graph answers from its outputs "
        f"({_describe(outputs)}): bentoship serves a classifier (a label output and class "
        "probabilities, as a (n, k) float tensor or a ZipMap) or a regressor (one float "
        "output, (n,) or (n, t))"
    )


def _is_column(shape: Sequence[Any]) -> bool:
    """``(n,)`` or ``(n, 1)`` (or a width the graph leaves open): one value per row."""
    return len(shape) == 1 or (len(shape) == 2 and (shape[1] == 1 or not isinstance(shape[1], int)))


def _classifier(
    model_file: Path, probabilities: Any, label: Any
) -> tuple[ModelOutput, list[str], Convert, str]:
    classes, origin = _label_classes(model_file, label.name)
    width = probabilities.shape[1]
    if isinstance(width, int) and width != len(classes):
        raise ModelLoadError(
            f"{model_file}: the graph's {probabilities.name} has {width} columns but its label "
            f"output {label.name} has {len(classes)} classes ({list(classes)}, from {origin})"
        )

    def proba(results: list[Any]) -> np.ndarray:
        return np.asarray(results[0], dtype=np.float64)

    output = ModelOutput("classification", classes)
    return output, [probabilities.name], proba, f"classifier, {len(classes)} classes from {origin}"


# --- class labels, read from the graph ----------------------------------------------------


def _graph(model_file: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(model_file), load_external_data=False).graph
    except Exception as exc:
        raise ModelLoadError(
            f"{model_file}: onnx could not read its graph ({describe(exc)})"
        ) from exc


def _producer(graph: Any, name: str) -> Any | None:
    for node in graph.node:
        if name in node.output:
            return node
    return None


def _attribute_labels(node: Any) -> list[Any] | None:
    for attribute in node.attribute:
        if attribute.name == "classlabels_strings" and attribute.strings:
            return [s.decode("utf-8") for s in attribute.strings]
        if attribute.name in _LABEL_ATTRIBUTES and attribute.ints:
            return list(attribute.ints)
    return None


def _zipmap_keys(model_file: Path, output_name: str) -> list[Any]:
    node = _producer(_graph(model_file), output_name)
    keys = _attribute_labels(node) if node is not None and node.op_type == "ZipMap" else None
    if keys is None:
        made_by = node.op_type if node is not None else "no node"
        raise ModelLoadError(
            f"{model_file}: the graph's output {output_name} is a sequence of maps made by "
            f"{made_by}, not by a ZipMap with class labels: cannot tell its classes"
        )
    return keys


def _label_classes(model_file: Path, label_name: str) -> tuple[tuple[int | str, ...], str]:
    """The classes a label output picks from, in probability order, and where they were found."""
    graph = _graph(model_file)
    name, as_text = label_name, None
    for _ in range(len(graph.node) + 1):
        node = _producer(graph, name)
        if node is None:
            break
        labels = _attribute_labels(node) if node.output[0] == name else None
        if labels is not None:
            return _labels(labels, as_text), f"{node.op_type} {node.name or name}"
        if node.op_type in _PASS_THROUGH:
            if node.op_type == "Cast" and as_text is None:
                to = [a.i for a in node.attribute if a.name == "to"]
                as_text = bool(to) and to[0] == _ONNX_STRING
            name = node.input[0]
            continue
        if node.op_type in ("ArrayFeatureExtractor", "Gather"):
            array = _constant(model_file, graph, node.input[0])
            if array is not None:
                return _labels(array.reshape(-1).tolist(), as_text), f"the array {node.input[0]}"
        break
    stop = f"{node.op_type} node" if node is not None else f"graph input or constant {name!r}"
    raise ModelLoadError(
        f"{model_file}: cannot find the class labels of the graph's label output {label_name}: "
        f"it comes from a {stop}, and bentoship reads them from a ZipMap, an ai.onnx.ml "
        "classifier node or a constant array of classes"
    )


def _labels(values: list[Any], as_text: bool | None) -> tuple[int | str, ...]:
    values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    if as_text:  # a Cast to string: the model answers "1", not 1
        values = [str(v) for v in values]
    return class_labels(np.array(values, dtype=object))


def _constant(model_file: Path, graph: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    tensors = [t for t in graph.initializer if t.name == name]
    tensors += [
        a.t
        for node in graph.node
        if node.op_type == "Constant" and name in node.output
        for a in node.attribute
        if a.name == "value"
    ]
    if not tensors:
        return None
    try:
        return numpy_helper.to_array(tensors[0], base_dir=str(model_file.parent))
    except Exception as exc:
        raise ModelLoadError(
            f"{model_file}: cannot read the graph's constant {name} ({describe(exc)})"
        ) from exc
