"""Admit a SavedModel only if every op in every graph and function is on the allowlist.

The allowlist (``op_allowlist``) holds pure computation and a few effects with a reason
each; everything else is refused, whatever it is: an op that writes or reads files, talks
to the network, runs Python, carries a graph or program in a string (``DatasetFromGraph``,
``XlaCallModule``), or one that a later TensorFlow adds.

Checkpoint I/O is how a loader restores ``variables/``: a TF1 loader (and
``tf.saved_model.load`` for a TF1 SavedModel) runs the MetaGraph's restore op with the
variables path fed into the saver's filename tensor. So checkpoint ops are judged by data
flow, never by node or function name:

- ``RestoreV2``, ``Restore``, ``RestoreSlice`` (reads) are admitted only in what the saver's
  restore op or save tensor runs, and only when the path they read is the fed filename
  itself (through ``Identity`` and function arguments).
- ``SaveV2``, ``Save``, ``SaveSlices``, ``MergeV2Checkpoints`` (writes) are admitted only in
  what the save tensor alone runs, never in what the restore op runs, and only when every
  path they write starts with the fed filename (``StringJoin`` of it and constant suffixes
  without ``..``, ``ShardedFilename``, ``Pack``), as TensorFlow's own savers build it.

Everything else, in saver functions too, must be on the allowlist. A function attribute
that names no function of the library names an op (TensorFlow runs an op as a function):
it is judged as that op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from tensorflow.core.framework import attr_value_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from exporter.checking.op_allowlist import ALLOWED

READS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
WRITES = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints"})
# The inputs of a write op that are paths: MergeV2Checkpoints' prefixes and destination.
_PATH_INPUTS = {"MergeV2Checkpoints": (0, 1)}
_PASS_THROUGH = frozenset({"Identity", "PlaceholderWithDefault", "Snapshot"})
_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})

MODEL, RESTORE, SAVE = "model", "restore", "save"  # Strictest first.
_STRICTNESS = {MODEL: 0, RESTORE: 1, SAVE: 2}
EXACT, DERIVED = 2, 1  # How a string relates to the fed filename: itself, or starts with it.


def _source(name: str) -> str:
    """The node (or argument) name of an input or tensor name: ``^a``, ``a:0``, ``a:out:0``."""
    return name.lstrip("^").split(":")[0]


def _function_names(value: attr_value_pb2.AttrValue) -> Iterator[str]:
    # A function's own attributes may name functions too (which it calls through a
    # placeholder attribute): those are called as well. Parsing bounds the nesting.
    functions = [value.func] if value.HasField("func") else []
    if value.HasField("list"):
        functions += list(value.list.func)
    for function in functions:
        yield function.name
        for inner in function.attr.values():
            yield from _function_names(inner)


def _called(node) -> set[str]:
    return {name for value in node.attr.values() for name in _function_names(value)}


def _model_roots(meta_graph: meta_graph_pb2.MetaGraphDef) -> set[str]:
    """The graph nodes that signatures and a TF1 loader's init ops run (main op, tables)."""
    roots = set()
    for signature in meta_graph.signature_def.values():
        for info in [*signature.inputs.values(), *signature.outputs.values()]:
            roots.add(_source(info.name))
            if info.HasField("coo_sparse"):
                roots.update(
                    _source(info.coo_sparse.values_tensor_name),
                    _source(info.coo_sparse.indices_tensor_name),
                    _source(info.coo_sparse.dense_shape_tensor_name),
                )
    for collection in meta_graph.collection_def.values():
        roots.update(_source(name) for name in collection.node_list.value)
        roots.update(_source(name.decode(errors="replace")) for name in collection.bytes_list.value)
    return roots - {""}


def _strings(node) -> list[bytes] | None:
    """The values of a string ``Const``, or None if ``node`` is not one."""
    if node.op != "Const" or not node.attr["value"].HasField("tensor"):
        return None
    tensor = node.attr["value"].tensor
    return list(tensor.string_val) if tensor.dtype == 7 else None  # DT_STRING


@dataclasses.dataclass
class _Body:
    """One graph or function body: its nodes by name, and what its arguments carry."""

    where: str
    nodes: dict
    taint: dict[str, int]  # Argument (or fed tensor) name -> EXACT or DERIVED.

    def relation(self, name: str, seen: frozenset = frozenset()) -> int:
        """How the tensor ``name`` relates to the fed filename: EXACT, DERIVED or 0."""
        source = _source(name)
        if source in self.taint:
            return self.taint[source]
        node = self.nodes.get(source)
        if node is None or source in seen:
            return 0
        seen |= {source}
        data = [i for i in node.input if not i.startswith("^")]
        if node.op in _PASS_THROUGH and data:
            return self.relation(data[0], seen)
        if node.op in ("StringJoin", "ShardedFilename") and data:
            if node.op == "StringJoin" and (
                b".." in node.attr["separator"].s
                or not all(self._safe_suffix(i, seen) for i in data[1:])
            ):
                return 0
            return DERIVED if self.relation(data[0], seen) else 0
        if node.op == "Pack" and data:
            return DERIVED if all(self.relation(i, seen) for i in data) else 0
        return 0

    def _safe_suffix(self, name: str, seen: frozenset) -> bool:
        """A constant piece of a path that cannot climb out of it (no ``..``)."""
        node = self.nodes.get(_source(name))
        if node is None or _source(name) in seen:
            return False
        values = _strings(node)
        if values is not None:
            return all(b".." not in value for value in values)
        data = [i for i in node.input if not i.startswith("^")]
        if node.op == "Select" and len(data) == 3:  # TensorFlow's savers pick a suffix.
            return all(self._safe_suffix(i, seen | {node.name}) for i in data[1:])
        return node.op in _PASS_THROUGH and bool(data) and self._safe_suffix(data[0], seen)


class _MetaGraph:
    """The verdicts for one MetaGraph: which ops run where, and which are refused."""

    def __init__(self, meta_graph: meta_graph_pb2.MetaGraphDef):
        graph = meta_graph.graph_def
        self.functions = {f.signature.name: f for f in graph.library.function}
        self.nodes = {node.name: node for node in graph.node}
        saver = meta_graph.saver_def
        self.filename = _source(saver.filename_tensor_name)
        # What signatures and init ops run is model code, whatever else reaches it.
        model = set()
        for start in _model_roots(meta_graph):
            model |= self._ancestors(start)
        restore = self._ancestors(_source(saver.restore_op_name)) - model
        save = self._ancestors(_source(saver.save_tensor_name)) - restore - model
        self.node_role = {
            name: RESTORE if name in restore else SAVE if name in save else MODEL
            for name in self.nodes
        }
        self.graph = _Body("graph", self.nodes, {self.filename: EXACT} if self.filename else {})
        self.role: dict[str, str] = {}
        self.taint: dict[str, dict[str, int]] = {}
        for node in graph.node:
            self._calls(node, self.node_role[node.name], self.graph)
        for name in meta_graph.object_graph_def.concrete_functions:
            self._reach(name, MODEL, {})
        for name in self.functions:  # Whatever no one calls is judged as model code.
            if name not in self.role:
                self._reach(name, MODEL, {})

    def _ancestors(self, start: str) -> set[str]:
        seen, todo = set(), [start] if start else []
        while todo:
            name = todo.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            todo.extend(_source(i) for i in self.nodes[name].input)
        return seen

    def _calls(self, node, role: str, body: _Body) -> None:
        """Reach the functions ``node`` calls, passing on the filename its inputs carry."""
        data = [i for i in node.input if not i.startswith("^")]
        for name in _called(node):
            taint = {}
            function = self.functions.get(name)
            if function is not None and node.op in _CALL_OPS:
                args = [arg.name for arg in function.signature.input_arg]
                taint = {
                    arg: body.relation(tensor)
                    for arg, tensor in zip(args, data, strict=False)
                    if body.relation(tensor)
                }
            self._reach(name, role, taint)

    def _reach(self, name: str, role: str, taint: dict[str, int]) -> None:
        if name not in self.functions:
            return  # Judged as an op by `refused`.
        known = self.role.get(name)
        if known is not None:
            merged = {
                arg: min(level, taint[arg])
                for arg, level in self.taint[name].items()
                if arg in taint
            }
            if _STRICTNESS[role] >= _STRICTNESS[known] and merged == self.taint[name]:
                return
            role = min(known, role, key=_STRICTNESS.get)
            taint = merged
        self.role[name], self.taint[name] = role, taint
        body = self._body(name)
        for node in self.functions[name].node_def:
            self._calls(node, role, body)

    def _body(self, name: str) -> _Body:
        function = self.functions[name]
        nodes = {node.name: node for node in function.node_def}
        return _Body(f"function {name}", nodes, self.taint.get(name, {}))

    def refused(self) -> Iterator[tuple[str, str]]:
        bodies = [(self.graph, self.node_role)]
        bodies += [
            (self._body(name), dict.fromkeys((n.name for n in f.node_def), self.role[name]))
            for name, f in self.functions.items()
        ]
        for body, roles in bodies:
            for node in body.nodes.values():
                why = _verdict(node, roles[node.name], body)
                if why is not None:
                    yield node.op, f"{body.where}{why}"
                for called in _called(node):
                    if called not in self.functions and called not in ALLOWED:
                        yield called, f"{body.where} (called as a function by {node.op})"


def _verdict(node, role: str, body: _Body) -> str | None:
    """None if ``node`` may run in ``role``; otherwise what is wrong, for the message."""
    if node.op in ALLOWED:
        return None
    data = [i for i in node.input if not i.startswith("^")]
    if node.op in READS:
        if role == MODEL:
            return " (reads a checkpoint outside the saver)"
        if not data or body.relation(data[0]) != EXACT:
            return " (reads a path other than the checkpoint the loader feeds in)"
        return None
    if node.op in WRITES:
        if role != SAVE:
            return (
                " (writes a checkpoint outside the saver's save)"
                if role == MODEL
                else " (writes a file when the checkpoint is restored)"
            )
        paths = [data[i] for i in _PATH_INPUTS.get(node.op, (0,)) if i < len(data)]
        if not paths or not all(body.relation(path) for path in paths):
            return " (writes a path that does not start with the checkpoint path fed in)"
        return None
    return ""


def scan(saved_model: saved_model_pb2.SavedModel) -> list[tuple[str, str]]:
    """Return ``(op, where)`` for every refused op in every graph and function.

    Example:
        >>> scan(parsed_saved_model)
        [('WriteFile', 'function __inference___call___42')]
    """
    found: set[tuple[str, str]] = set()
    for meta_graph in saved_model.meta_graphs:
        found.update(_MetaGraph(meta_graph).refused())
    return sorted(found)


def ops(saved_model: saved_model_pb2.SavedModel) -> Iterable[str]:
    """Every op type in every graph and function of ``saved_model``, sorted."""
    types = set()
    for meta_graph in saved_model.meta_graphs:
        types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            types.update(node.op for node in function.node_def)
    return sorted(types)
