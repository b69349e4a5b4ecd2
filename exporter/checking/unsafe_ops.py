"""Find graph ops that touch files, processes, the network or Python, before anything runs.

The list starts from TensorFlow's own ``saved_model_cli scan`` denylist
(``_OP_DENYLIST = {'WriteFile', 'ReadFile', 'PrintV2'}`` in
``tensorflow/python/tools/saved_model_cli.py``, TF 2.21) and adds the other ops of
TensorFlow's op registry that open, write, list or delete files, run Python, or talk to
other hosts.

Checkpoint I/O (``SaveV2``, ``RestoreV2``, ...) is how a SavedModel reads its own
``variables/``; it is allowed only in functions that are reachable solely from the
MetaGraph's saver, and flagged anywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable

from tensorflow.core.framework import attr_value_pb2
from tensorflow.core.protobuf import saved_model_pb2

UNSAFE_OPS = frozenset(
    {
        # saved_model_cli scan's own denylist.
        "WriteFile", "ReadFile", "PrintV2",
        # Files: listing, deleting, memory-mapping, reading through readers and tables.
        "MatchingFiles", "DeleteFile", "ImmutableConst",
        "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2",
        "TFRecordReader", "TFRecordReaderV2", "FixedLengthRecordReader",
        "FixedLengthRecordReaderV2", "LMDBReader", "IdentityReader", "IdentityReaderV2",
        "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
        # Datasets that open or write files.
        "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset",
        "SqlDataset", "ExperimentalSqlDataset", "LMDBDataset", "ExperimentalLMDBDataset",
        "MatchingFilesDataset", "ExperimentalMatchingFilesDataset", "SnapshotDataset",
        "SnapshotDatasetV2", "SaveDataset", "SaveDatasetV2", "LoadDataset",
        "ExperimentalDatasetToTFRecord", "DatasetToTFRecord", "CacheDataset",
        "CacheDatasetV2",
        # Summaries and debugging dumps write files.
        "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary",
        "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary",
        "WriteAudioSummary", "WriteGraphSummary", "WriteRawProtoSummary", "ImportEvent",
        "DebugIdentityV2", "DebugIdentityV3",
        # Python.
        "PyFunc", "PyFuncStateless", "EagerPyFunc",
        # Network.
        "Rpc", "TryRpc", "RpcCall", "RpcCheckStatus", "RpcClient", "RpcServer",
        "RpcServerStart", "RpcServerRegister", "RpcGetValue", "DeleteRpcFutureResource",
        "GcsConfigureCredentials", "GcsConfigureBlockCache", "BigQueryReader",
        "DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3",
        "DataServiceDatasetV4",
    }
)  # fmt: skip

CHECKPOINT_OPS = frozenset(
    {"SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints"}
)


def _called_functions(nodes) -> set[str]:
    names = set()
    for node in nodes:
        for value in node.attr.values():
            names.update(_function_names(value))
    return names


def _function_names(value: attr_value_pb2.AttrValue) -> Iterable[str]:
    # A function's own attributes may name functions too (which it calls through a
    # placeholder attribute): those are called as well. Parsing bounds the nesting.
    functions = [value.func] if value.HasField("func") else []
    if value.HasField("list"):
        functions += list(value.list.func)
    for function in functions:
        yield function.name
        for inner in function.attr.values():
            yield from _function_names(inner)


def _reachable(start: set[str], functions: dict) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        todo.extend(_called_functions(functions[name].node_def))
    return seen


def scan(saved_model: saved_model_pb2.SavedModel) -> list[tuple[str, str]]:
    """Return ``(op, where)`` for every unsafe op in every graph and function.

    Example:
        >>> scan(parsed_saved_model)
        [('WriteFile', 'function __inference___call___42')]
    """
    found = []
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name: f for f in graph.library.function}
        saver_nodes = {
            meta_graph.saver_def.save_tensor_name.split(":")[0],
            meta_graph.saver_def.restore_op_name.split(":")[0],
        } - {""}
        by_saver = _reachable(_called_functions(n for n in graph.node if n.name in saver_nodes),
                              functions)  # fmt: skip
        roots = _called_functions(n for n in graph.node if n.name not in saver_nodes)
        roots |= set(meta_graph.object_graph_def.concrete_functions)
        by_others = _reachable(roots, functions)
        saver_only = by_saver - by_others
        for node in graph.node:
            if node.op in UNSAFE_OPS or (
                node.op in CHECKPOINT_OPS and node.name not in saver_nodes
            ):
                found.append((node.op, f"graph node {node.name}"))
        for name, function in functions.items():
            allowed = CHECKPOINT_OPS if name in saver_only else frozenset()
            for node in function.node_def:
                if node.op in UNSAFE_OPS or (node.op in CHECKPOINT_OPS and node.op not in allowed):
                    found.append((node.op, f"function {name}"))
    return sorted(set(found))
