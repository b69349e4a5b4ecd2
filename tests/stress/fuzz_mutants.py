"""Seeded mutants of a SavedModel: each one a JSON-able recipe applied to a copy of the original.

Every recipe changes the graph (``saved_model.pb``) or the variables (``variables/``), so a
checker that verifies our content fingerprint must never pass one. A recipe is small and
stable: a crashing mutant can be kept as its recipe (or as its one mutated file).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
from pathlib import Path

import fuzz_sstable
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2
from tensorflow.core.protobuf import (
    meta_graph_pb2,
    saved_model_pb2,
    saved_object_graph_pb2,
    struct_pb2,
    tensor_bundle_pb2,
)

PB = "saved_model.pb"
INDEX = "variables/variables.index"
DATA = "variables/variables.data-00000-of-00001"
DEEP = 10_000

# The seeded kinds' shares of what the fixed mutants leave (at least one each).
_SHARES = {
    ("flip", PB): 75,
    ("flip", INDEX): 25,
    ("reseal", INDEX): 35,
    ("flip", DATA): 25,
    ("truncate", PB): 25,
    ("truncate", INDEX): 30,
    ("truncate", DATA): 15,
    ("random", PB): 20,
}
# Mutants that take no random choice: each exists once.
FIXED = [
    # The same index entries, written by fuzz_sstable: a control that loads (see CRAFTED).
    {"op": "craft", "file": INDEX, "table": "rewritten"},
    {"op": "remove", "file": "variables"},
    {"op": "remove", "file": INDEX},
    {"op": "remove", "file": DATA},
    {"op": "empty_dir", "file": "variables"},
    {"op": "file_for_dir", "file": "variables"},
    {"op": "symlink", "file": PB, "target": "/dev/zero"},
    {"op": "symlink", "file": INDEX, "target": "/dev/zero"},
    {"op": "symlink", "file": DATA, "target": "/dev/zero"},
    {"op": "symlink", "file": "variables", "target": "/dev/zero"},
    {"op": "deep", "shape": "structured_value", "depth": DEEP, "append": False},
    {"op": "deep", "shape": "structured_value", "depth": DEEP, "append": True},
    {"op": "deep", "shape": "attr_func", "depth": DEEP, "append": True},
    {"op": "deep", "shape": "attr_list_func", "depth": DEEP, "append": True},
    {"op": "deep", "shape": "unknown_group", "depth": DEEP, "append": True},
    {"op": "deep", "shape": "unknown_group", "depth": 10 * DEEP, "append": False},
    {"op": "deep", "shape": "wide_graph", "depth": DEEP, "append": True},
]
# Index entries with hostile values and right checksums: what reaches TensorFlow's parser.
KERNEL, _BIAS, _GRAPH = (
    "variables/0/.ATTRIBUTES/VARIABLE_VALUE",
    "variables/1/.ATTRIBUTES/VARIABLE_VALUE",
    "_CHECKPOINTABLE_OBJECT_GRAPH",
)
_BIG = 1 << 62
CRAFTED = [
    {"table": "empty"},
    {"table": "no_header"},
    {"table": "reversed"},
    {"table": "duplicate"},
    {"key": "", "set": {"num_shards": 0}},
    {"key": "", "set": {"num_shards": (1 << 31) - 1}},
    {"key": "", "set": {"num_shards": -1}},
    {"key": "", "set": {"endianness": 1}},
    {"key": "", "set": {"version": {"producer": 1, "min_consumer": 1 << 30}}},
    {"key": "", "set": {"version": {"producer": 1, "bad_consumers": [0, 1, 2]}}},
    {"key": KERNEL, "set": {"dtype": 0}},
    {"key": KERNEL, "set": {"dtype": 9999}},
    {"key": KERNEL, "set": {"dtype": 7}},  # DT_STRING
    {"key": KERNEL, "set": {"dtype": 20}},  # DT_RESOURCE
    {"key": KERNEL, "set": {"dtype": 21}},  # DT_VARIANT
    {"key": KERNEL, "set": {"dtype": 19}},  # DT_HALF: half the bytes
    {"key": KERNEL, "set": {"shape": [-5]}},
    {"key": KERNEL, "set": {"shape": [-1, 3, 3, 4]}},
    {"key": KERNEL, "set": {"shape": [1 << 40, 1 << 40]}},
    {"key": KERNEL, "set": {"shape": [_BIG]}},
    {"key": KERNEL, "set": {"shape": [1] * 300}},
    {"key": KERNEL, "set": {"shape": [108]}},  # Same element count, another rank.
    {"key": KERNEL, "set": {"unknown_rank": True}},
    {"key": KERNEL, "set": {"offset": _BIG}},
    {"key": KERNEL, "set": {"offset": -1}},
    {"key": KERNEL, "set": {"size": _BIG}},
    {"key": KERNEL, "set": {"size": -1}},
    {"key": KERNEL, "set": {"size": 0}},
    {"key": KERNEL, "set": {"shard_id": 1}},
    {"key": KERNEL, "set": {"shard_id": -1}},
    {"key": KERNEL, "set": {"crc32c": 0}},
    {"key": KERNEL, "value_hex": "0aff"},  # Does not parse: a length past the end.
    {"key": KERNEL, "set": {"slices": [[[0, 1]]]}},
    {"key": KERNEL, "set": {"slices": [[[_BIG, -1], [-1, _BIG]]]}},
    {"key": _BIAS, "set": {"shape": [], "size": 4}},  # A scalar where a vector is restored.
    {"key": _BIAS, "set": {"dtype": 7, "shape": [4], "size": 16}},
    {"key": _GRAPH, "set": {"offset": 0, "size": 432}},  # The object graph: a kernel's bytes.
    {"key": _GRAPH, "set": {"size": 0}},
    {"key": _GRAPH, "set": {"dtype": 1}},
]
FIXED += [{"op": "craft", "file": INDEX, **edit} for edit in CRAFTED]
# Graph edits that still parse: hostile shapes and types where TensorFlow builds them.
GRAPH_EDITS = (
    "const_negative_dim",
    "const_too_many_dims",
    "const_overflowing_shape",
    "const_garbage_variant",
    "output_shapes_negative_dim",
    "variable_negative_dim",
    "variable_too_many_dims",
    "argument_invalid_dtype",
    "var_handle_negative_dim",
    "signature_negative_dim",
)
FIXED += [{"op": "craft", "file": PB, "edit": edit} for edit in GRAPH_EDITS]
FIXED += [
    {"op": "fifo", "file": INDEX},
    {"op": "fifo", "file": DATA},
    {"op": "fifo", "file": PB},
    {"op": "sparse", "file": PB, "size": 3 << 30},  # Past the 2 GiB a protobuf can be.
]


def kind(recipe: dict) -> str:
    """The recipe's kind for the per-kind counts: op and file (or shape)."""
    detail = recipe.get("shape") or recipe["file"].replace("variables.data-00000-of-00001", "data")
    return f"{recipe['op']} {detail}"


def generate(original: Path, count: int, seed: int) -> list[dict]:
    """``count`` distinct recipes, the same for the same original sizes and seed.

    The fixed mutants come first (all of them when ``count`` leaves one of each seeded
    kind), then the seeded kinds: one each, the rest in proportion to their share.
    """
    rng = random.Random(seed)
    sizes = {name: (original / name).stat().st_size for name in (PB, INDEX, DATA)}
    blocks = fuzz_sstable.data_blocks((original / INDEX).read_bytes())
    recipes = FIXED[: max(0, min(len(FIXED), count - len(_SHARES)))]
    left = count - len(recipes)
    quotas = dict.fromkeys(_SHARES, 1) if left >= len(_SHARES) else {}
    spare, total = left - len(quotas), sum(_SHARES.values())
    for key, share in _SHARES.items():
        quotas[key] = quotas.get(key, 0) + share * spare // total
    for key in list(_SHARES)[: left - sum(quotas.values())]:
        quotas[key] += 1
    seen = set()
    for (op, name), quota in quotas.items():
        made = 0
        while made < quota:
            recipe = _seeded(op, name, sizes[name], blocks, rng)
            key = repr(sorted(recipe.items()))
            if key not in seen:
                seen.add(key)
                recipes.append(recipe)
                made += 1
    return recipes


def _seeded(op: str, name: str, size: int, blocks: list, rng: random.Random) -> dict:
    if op == "flip":  # Distinct bits, so no flip undoes another.
        bits = sorted(rng.sample(range(size * 8), rng.choice((1, 1, 1, 2, 3, 8))))
        return {"op": op, "file": name, "bits": bits}
    if op == "reseal":  # Flips inside the entries, checksum recomputed.
        bits = [offset * 8 + b for offset, size in blocks for b in range(size * 8)]
        chosen = sorted(rng.sample(bits, rng.choice((1, 1, 2, 3))))
        return {"op": op, "file": name, "bits": chosen}
    if op == "truncate":  # Strictly shorter: a cut of 0 bytes is no mutant.
        return {"op": op, "file": name, "size": rng.randrange(size)}
    length = rng.choice((1, 16, 1024, size))
    return {"op": op, "file": name, "size": length, "seed": rng.getrandbits(32)}


def apply(recipe: dict, original: Path, out: Path) -> Path:
    """Write the mutant of ``original`` that ``recipe`` describes at ``out``; return ``out``."""
    shutil.copytree(original, out, symlinks=True)
    target = out / recipe["file"] if "file" in recipe else out / PB
    op = recipe["op"]
    if op == "flip":
        data = bytearray(target.read_bytes())
        for bit in recipe["bits"]:
            data[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(data))
    elif op == "reseal":
        data = bytearray(target.read_bytes())
        for bit in recipe["bits"]:
            data[bit // 8] ^= 1 << (bit % 8)
        for offset, size in fuzz_sstable.data_blocks(bytes(data)):
            fuzz_sstable.reseal(data, offset, size)
        target.write_bytes(bytes(data))
    elif op == "craft" and recipe["file"] == PB:
        target.write_bytes(crafted_graph(target.read_bytes(), recipe["edit"]))
    elif op == "craft":
        target.write_bytes(crafted_index(target.read_bytes(), recipe))
    elif op == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif op == "sparse":  # Holes: no disk space, but reading it all takes its whole size.
        with open(target, "r+b") as file:
            file.truncate(recipe["size"])
    elif op == "truncate":
        target.write_bytes(target.read_bytes()[: recipe["size"]])
    elif op == "random":
        target.write_bytes(random.Random(recipe["seed"]).randbytes(recipe["size"]))
    elif op == "deep":
        prefix = target.read_bytes() if recipe["append"] else b""
        target.write_bytes(prefix + deep_message(recipe["shape"], recipe["depth"]))
    elif op in ("remove", "empty_dir", "file_for_dir", "symlink"):
        _remove(target)
        if op == "empty_dir":
            target.mkdir()
        elif op == "file_for_dir":
            target.write_bytes(b"not a directory\n")
        elif op == "symlink":
            os.symlink(recipe["target"], target)
    else:
        raise ValueError(f"unknown mutation {op!r}")
    return out


def crafted_index(table: bytes, recipe: dict) -> bytes:
    """The index ``table`` with one entry's fields set (``key``, ``set``) or its bytes
    replaced (``key``, ``value_hex``), or its entries rearranged (``table``), written with
    right checksums."""
    entries = fuzz_sstable.read(table)
    how = recipe.get("table")
    if how == "empty":
        entries = []
    elif how == "no_header":
        entries = entries[1:]
    elif how == "reversed":
        entries = entries[::-1]
    elif how == "duplicate":
        entries = entries[:2] + entries[1:]
    elif how is None:
        key = recipe["key"].encode()
        bundle = tensor_bundle_pb2
        proto = bundle.BundleEntryProto if key else bundle.BundleHeaderProto
        (value,) = [v for k, v in entries if k == key]
        message = proto.FromString(value)
        for field, wanted in recipe.get("set", {}).items():
            _set(message, field, wanted)
        value = bytes.fromhex(recipe.get("value_hex", message.SerializeToString().hex()))
        entries = [(k, value if k == key else v) for k, v in entries]
    elif how != "rewritten":
        raise ValueError(f"unknown table edit {how!r}")
    return fuzz_sstable.write(entries)


def crafted_graph(data: bytes, edit: str) -> bytes:
    """``saved_model.pb`` with one hostile value, serialized again so that it parses."""
    proto = saved_model_pb2.SavedModel.FromString(data)
    meta = proto.meta_graphs[0]
    call = next(f for f in meta.graph_def.library.function if "__call__" in f.signature.name)
    const = next(n for n in call.node_def if n.op == "Const")
    variable = next(n.variable for n in meta.object_graph_def.nodes if n.HasField("variable"))
    if edit.startswith("const_"):
        shape = const.attr["value"].tensor.tensor_shape
        dims = {
            "negative_dim": [-5],
            "too_many_dims": [1] * 300,
            "overflowing_shape": [1 << 40] * 2,
        }
        if edit == "const_garbage_variant":
            const.attr["dtype"].type = 21  # DT_VARIANT
            tensor = const.attr["value"].tensor
            tensor.Clear()
            tensor.dtype = 21
            tensor.variant_val.add(type_name="tensorflow::TensorList", metadata=b"\xff" * 9)
        else:
            shape.ClearField("dim")
            for size in dims[edit.removeprefix("const_")]:
                shape.dim.add(size=size)
    elif edit == "output_shapes_negative_dim":
        node = next(n for n in call.node_def if "_output_shapes" in n.attr)
        node.attr["_output_shapes"].list.shape[0].dim.add(size=-5)
    elif edit.startswith("variable_"):
        variable.shape.ClearField("dim")
        for size in [-5] if edit == "variable_negative_dim" else [1] * 300:
            variable.shape.dim.add(size=size)
    elif edit == "argument_invalid_dtype":
        call.signature.input_arg[0].type = 9999
    elif edit == "var_handle_negative_dim":
        node = next(n for n in meta.graph_def.node if n.op == "VarHandleOp")
        node.attr["shape"].shape.dim.add(size=-5)
    elif edit == "signature_negative_dim":
        (tensor,) = meta.signature_def["serving_default"].inputs.values()
        tensor.tensor_shape.dim[1].size = -5
    else:
        raise ValueError(f"unknown graph edit {edit!r}")
    return proto.SerializeToString()


def _set(message, field: str, wanted) -> None:
    if field == "shape":  # A list of sizes, or {"ones": n} for n dimensions of 1.
        message.shape.ClearField("dim")
        for size in [1] * wanted["ones"] if isinstance(wanted, dict) else wanted:
            message.shape.dim.add(size=size)
    elif field == "unknown_rank":
        message.shape.unknown_rank = wanted
    elif field == "slices":
        for extents in wanted:
            piece = message.slices.add()
            for start, length in extents:
                piece.extent.add(start=start, length=length)
    elif field == "version":
        message.version.producer = wanted["producer"]
        message.version.min_consumer = wanted.get("min_consumer", 0)
        message.version.bad_consumers.extend(wanted.get("bad_consumers", []))
    else:
        setattr(message, field, wanted)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def content(directory: Path) -> str:
    """A digest of what the fingerprint covers (graph and variables): links, folders, pipes
    and devices named, a regular file by its size and first 16 MiB."""
    digest = hashlib.sha256()
    for name in (PB, "variables", INDEX, DATA):
        path = directory / name
        try:
            mode = path.lstat().st_mode
        except OSError:  # Missing, or its folder is not one.
            entry = b"missing"
        else:
            if stat.S_ISLNK(mode):
                entry = f"link {os.readlink(path)}".encode()
            elif stat.S_ISDIR(mode):
                entry = f"dir {sorted(p.name for p in path.iterdir())}".encode()
            elif stat.S_ISREG(mode):
                with open(path, "rb") as file:
                    head = file.read(16 << 20)
                size = path.stat().st_size
                entry = f"file {size} ".encode() + hashlib.sha256(head).digest()
            else:
                entry = f"special {stat.S_IFMT(mode)}".encode()
        digest.update(name.encode() + b"\0" + entry + b"\0")
    return digest.hexdigest()


# -- deep protobufs from raw wire bytes ------------------------------------------------------


_varint = fuzz_sstable._put_varint  # Protobuf and the index share the encoding.


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _number(message, name: str) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number


def _nest(depth: int, inner: bytes, *wrappers: int) -> bytes:
    """``inner`` wrapped ``depth`` times in the chain of fields ``wrappers`` (innermost last)."""
    for _ in range(depth):
        for number in reversed(wrappers):
            inner = _field(number, inner)
    return inner


def _in_node_attr(value: bytes) -> bytes:
    """A SavedModel holding one MetaGraph whose graph has one node with attribute ``x``."""
    entry = _field(1, b"x") + _field(2, value)  # map<string, AttrValue> entry: key 1, value 2.
    node = _field(_number(node_def_pb2.NodeDef, "name"), b"deep")
    node += _field(_number(node_def_pb2.NodeDef, "op"), b"NoOp")
    node += _field(_number(node_def_pb2.NodeDef, "attr"), entry)
    graph = _field(_number(graph_pb2.GraphDef, "node"), node)
    meta = _field(_number(meta_graph_pb2.MetaGraphDef, "graph_def"), graph)
    return _field(_number(saved_model_pb2.SavedModel, "meta_graphs"), meta)


def deep_message(shape: str, depth: int) -> bytes:
    """A SavedModel (or SavedModel fields to append) nested ``depth`` levels deep.

    ``structured_value``: a concrete function's input signature, a list in a list ...;
    ``attr_func``: an attribute whose function has an attribute whose function has ...;
    ``attr_list_func``: the same through attribute lists of functions;
    ``unknown_group``: groups of an unknown field, each opened inside the last;
    ``wide_graph``: not deep but wide, ``depth`` times ten nodes in one graph.
    """
    attr, func = attr_value_pb2.AttrValue, attr_value_pb2.NameAttrList
    if shape == "structured_value":
        value = _nest(
            depth,
            b"",
            _number(struct_pb2.StructuredValue, "list_value"),
            _number(struct_pb2.ListValue, "values"),
        )
        concrete = _field(
            _number(saved_object_graph_pb2.SavedConcreteFunction, "canonicalized_input_signature"),
            value,
        )
        entry = _field(1, b"f") + _field(2, concrete)
        functions = _number(saved_object_graph_pb2.SavedObjectGraph, "concrete_functions")
        graph = _field(functions, entry)
        meta = _field(_number(meta_graph_pb2.MetaGraphDef, "object_graph_def"), graph)
        return _field(_number(saved_model_pb2.SavedModel, "meta_graphs"), meta)
    if shape == "attr_func":
        entry = _number(func, "attr")
        # AttrValue.func -> NameAttrList.attr (a map entry: value is field 2) -> AttrValue ...
        return _in_node_attr(_nest(depth, b"", _number(attr, "func"), entry, 2))
    if shape == "attr_list_func":
        lists = _number(attr_value_pb2.AttrValue.ListValue, "func")
        chain = (_number(attr, "list"), lists, _number(func, "attr"), 2)
        return _in_node_attr(_nest(depth, b"", *chain))
    if shape == "unknown_group":
        number = 9999  # No field of SavedModel: parsers must skip it, group in group.
        return _varint(number << 3 | 3) * depth + _varint(number << 3 | 4) * depth
    if shape == "wide_graph":
        nodes = b"".join(
            _field(
                _number(graph_pb2.GraphDef, "node"),
                _field(_number(node_def_pb2.NodeDef, "name"), f"n{i}".encode())
                + _field(_number(node_def_pb2.NodeDef, "op"), b"NoSuchOp"),
            )
            for i in range(10 * depth)
        )
        meta = _field(_number(meta_graph_pb2.MetaGraphDef, "graph_def"), nodes)
        return _field(_number(saved_model_pb2.SavedModel, "meta_graphs"), meta)
    raise ValueError(f"unknown deep shape {shape!r}")
