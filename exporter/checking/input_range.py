"""Whether a SavedModel rescales its images before its first layer, read from its graph alone.

Some SavedModels (TF Model Garden's TF Hub exports, for one) expect pixels normalized by an
ImageNet mean and standard deviation, not RGB in [0, 1], and nothing in their graph scales the
input before the first convolution. ``first_layer_input`` follows the images (the first input
of each of the root's ``__call__`` concrete functions) forward through the graph, into and out
of the functions it calls, and says whether an arithmetic op meets them before a convolution
or matrix product does. Nothing is loaded or run.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools

from tensorflow.core.protobuf import saved_model_pb2

# First layers: convolutions and matrix products, grappler's fused ones, jax2tf's XLA ones.
FIRST_LAYER_OPS = frozenset({
    "Conv", "Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput",
    "Conv3DBackpropInputV2", "_FusedConv2D", "_FusedDepthwiseConv2dNative", "MatMul",
    "_FusedMatMul", "SparseMatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
    "XlaConv", "XlaConvV2", "XlaDot", "XlaDotV2",
})  # fmt: skip
# Ops that scale or shift values (a mean, a standard deviation, a 1/255, a batch norm). Not
# the nonlinear ones (Rsqrt, Tanh, ...): on raw pixels they normalize nothing, so pass them.
RESCALING_OPS = frozenset({
    "Mul", "MulNoNan", "RealDiv", "Div", "DivNoNan", "FloorDiv", "TruncateDiv", "Sub", "Add",
    "AddV2", "AddN", "BiasAdd", "BiasAddV1", "SquaredDifference", "FusedBatchNorm",
    "FusedBatchNormV2", "FusedBatchNormV3",
})  # fmt: skip
# Ops whose outputs are no pixel values (shapes, checks, booleans, indices, side effects): the
# images' way into a tf.debugging assert, say, ends there. Every other op passes values on.
BLOCKING_OPS = frozenset({
    "Shape", "ShapeN", "Size", "Rank", "VariableShape", "BroadcastArgs", "Assert", "NoOp",
    "PrintV2", "StringFormat", "Less", "LessEqual", "Greater", "GreaterEqual", "Equal",
    "NotEqual", "ApproximateEqual", "IsFinite", "IsNan", "IsInf", "All", "Any", "LogicalAnd",
    "LogicalOr", "LogicalNot", "ArgMax", "ArgMin", "Where", "ZerosLike", "OnesLike",
    "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
})  # fmt: skip
# Ops that call functions, with how many leading inputs (a condition, a branch index) their
# callees do not take. Control flow is followed like a call: into every branch, and through
# one pass of a loop's body (so a loop that rescales from its second pass on rescales nothing
# here). A While's cond gives a boolean and is not followed.
CALL_OPS = {"PartitionedCall": 0, "StatefulPartitionedCall": 0, "If": 1, "StatelessIf": 1,
            "Case": 1, "StatelessCase": 1, "While": 0, "StatelessWhile": 0}  # fmt: skip
_CALLEE_ATTRS = ("f", "then_branch", "else_branch", "branches", "body")
# How much of the images a tensor carries: nothing, rescaled values, raw values.
_CLEAN, _SCALED, _RAW = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class InputPath:
    """What the images meet on their way to the first layer.

    Attributes:
        rescaled: A rescaling op stands between the images and every first layer reached.
        first_layer_op: The op type of a first layer that takes the images unscaled, such as
            ``"Conv2D"``; None when ``rescaled``.
        function: The FunctionDef holding that first layer; when ``rescaled``, the one
            holding a first layer reached after the rescaling.
    """

    rescaled: bool
    first_layer_op: str | None
    function: str | None


def first_layer_input(proto: saved_model_pb2.SavedModel) -> InputPath | None:
    """Say whether the root's ``__call__`` rescales its images before its first layer.

    Rescaled only if every concrete function of ``__call__`` (inference, training, any other
    trace) rescales; otherwise the first one that does not is described.

    Args:
        proto: A parsed ``saved_model.pb``.

    Returns:
        The verdict; None when it cannot tell: no root ``__call__`` concrete function, no
        convolution or matrix product reached from the images, or calls nested too deep.

    Example:
        >>> first_layer_input(parsed_saved_model)
        InputPath(rescaled=False, first_layer_op='Conv2D', function='__inference___call___42')
    """
    if not proto.meta_graphs or not proto.meta_graphs[0].object_graph_def.nodes:
        return None
    nodes = proto.meta_graphs[0].object_graph_def.nodes
    functions = {f.signature.name: f for f in proto.meta_graphs[0].graph_def.library.function}
    names = []
    for child in nodes[0].children:  # tf.Module and tf-keras models alike (a function node).
        node = nodes[child.node_id] if 0 <= child.node_id < len(nodes) else None
        if child.local_name == "__call__" and node is not None:
            names += node.function.concrete_functions
            if node.HasField("bare_concrete_function"):
                names.append(node.bare_concrete_function.concrete_function_name)
    memo: dict = {}
    verdict = None
    try:
        for name in (n for n in names if n in functions and functions[n].signature.input_arg):
            images = (_RAW,) + (_CLEAN,) * (len(functions[name].signature.input_arg) - 1)
            raw, scaled, _ = _follow(name, images, functions, memo)
            if raw:
                return InputPath(False, *raw)
            verdict = verdict or (InputPath(True, None, scaled) if scaled else None)
    except RecursionError:  # Calls nested deeper than Python's stack: no real model's.
        return None
    return verdict


def _follow(name: str, inputs: tuple, functions: dict, memo: dict) -> tuple:
    """Follow ``inputs`` (a level per input arg) through function ``name``. Returns the first
    layer met by raw values as ``(op, function)``, the function of one met by rescaled values,
    and the level of each output arg."""
    key = (name, inputs)
    if key in memo:
        return memo[key]
    function = functions[name]
    outputs = [a.name for a in function.signature.output_arg]
    memo[key] = (None, None, (_CLEAN,) * len(outputs))  # Until done: a call cycle is clean.
    levels = {a.name: level for a, level in zip(function.signature.input_arg, inputs, strict=True)}
    called: dict[str, tuple] = {}  # Per call node: its outputs' levels, {output name: index}.
    consumers = collections.defaultdict(list)
    for node in function.node_def:  # Control inputs ("^name") carry no values.
        for ref in {r.partition(":")[0] for r in node.input if not r.startswith("^")}:
            consumers[ref].append(node)
    raw = scaled = None

    def level(ref: str) -> int:
        node, _, rest = ref.partition(":")
        if node not in called:
            return levels.get(node, _CLEAN)
        arg, _, index = rest.partition(":")  # "call:output:3", or "call:name:0" if direct.
        outs, names = called[node]
        i = names.get(arg, int(index) if index.isdigit() else -1)
        return outs[i] if 0 <= i < len(outs) else _CLEAN

    # A worklist, not one pass: a FunctionDef need not list its nodes in order. Levels only
    # rise (merged with max), each at most twice, so this ends.
    todo = [node for arg, value in levels.items() if value for node in consumers[arg]]
    while todo:
        node = todo.pop()
        data = [level(ref) for ref in node.input if not ref.startswith("^")]
        seen = max(data, default=_CLEAN)
        if seen == _CLEAN or node.op in BLOCKING_OPS:
            continue
        if node.op in FIRST_LAYER_OPS:  # Its outputs are features, no longer the images.
            raw = raw or ((node.op, name) if seen == _RAW else None)
            scaled = scaled or (name if seen == _SCALED else None)
            continue
        callees = _callees(node, functions)
        if not callees:  # A call of a function not in the library passes values on, too.
            new = _SCALED if node.op in RESCALING_OPS else seen
            if new > levels.get(node.name, _CLEAN):
                levels[node.name] = new
                todo += consumers[node.name]
            continue
        outs = data if node.op in ("While", "StatelessWhile") else []  # Loop vars pass, too.
        for callee in callees:
            arguments = functions[callee].signature.input_arg
            padded = data[CALL_OPS.get(node.op, 0) :] + [_CLEAN] * len(arguments)
            found = _follow(callee, tuple(padded[: len(arguments)]), functions, memo)
            raw, scaled, outs = raw or found[0], scaled or found[1], _merge(outs, found[2])
        old = called.get(node.name, ((), {}))[0]
        if _merge(old, outs) != old:  # A direct call's outputs go by their names.
            named = functions[node.op].signature.output_arg if node.op in functions else ()
            called[node.name] = (_merge(old, outs), {a.name: i for i, a in enumerate(named)})
            todo += consumers[node.name]
    memo[key] = (raw, scaled, tuple(level(function.ret.get(arg, "")) for arg in outputs))
    return memo[key]


def _callees(node, functions: dict) -> list[str]:
    """The functions of the library that ``node`` calls."""
    if node.op in functions:  # A direct call: the op is the function.
        return [node.op]
    attrs = [node.attr[a] for a in _CALLEE_ATTRS if a in node.attr] if node.op in CALL_OPS else []
    names = [f.name for a in attrs for f in ([a.func] if a.HasField("func") else a.list.func)]
    return [name for name in names if name in functions]


def _merge(levels, more) -> tuple:
    """The higher of two levels, element by element; the longer one's tail as it is."""
    return tuple(max(a, b) for a, b in itertools.zip_longest(levels, more, fillvalue=_CLEAN))
