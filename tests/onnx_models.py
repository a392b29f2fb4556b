"""Tiny ONNX graphs for tests, built with onnx's helper API: outputs that are known functions
of the input, so what a detector makes of them can be checked by the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

SIZE = 32  # the input side the tests configure


def mean_graph(
    path: Path,
    shape: tuple[Any, ...] = ("N", 3, SIZE, SIZE),
    two_classes: bool = False,
) -> Path:
    """A graph whose output is the mean of its whole input per image, (N, 1); with
    ``two_classes``, (N, 2) holding [mean, -mean]."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m"], ["score" if not two_classes else "pos"], axis=1),
    ]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])]
    if two_classes:
        nodes += [
            helper.make_node("Neg", ["pos"], ["neg"]),
            helper.make_node("Concat", ["pos", "neg"], ["score"], axis=1),
        ]
        outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 2])]
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        outputs,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
