"""The Open Inference Protocol v2 (KServe / Triton), with the binary tensor extension.

A request body is JSON, optionally followed by raw little-endian tensor bytes: the JSON's
length is in the ``Inference-Header-Content-Length`` header and each binary input says its
size in ``parameters.binary_data_size``. Responses use the same layout for outputs the
client asked to receive as binary (tritonclient's default).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from serving.errors import BadRequest

HEADER_LENGTH = "inference-header-content-length"
MAX_ELEMENTS = 1 << 28  # far above any body the size limit lets through
MAX_DIMS = 32  # numpy allows 32 (1.x) or 64 (2.x); no model takes more

INFER_PATH = "/v2/models/{model}/infer"
INFER_VERSION_PATH = "/v2/models/{model}/versions/{version}/infer"
# The routes that run a model, and the ingress method that answers each (answered before
# FastAPI's routing, ``serving.http``).
INFERENCE_ROUTES = {INFER_PATH: "infer", INFER_VERSION_PATH: "infer_version"}
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}
BYTES = "BYTES"  # strings (UTF-8 text): a numpy object array of str here
TEXT_INPUT = "text"  # a text model's one input: BYTES [n], tokenized by the replica
ONNX_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model's signature; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request."""

    id: str | None
    inputs: dict[str, NDArray[Any]]
    binary_outputs: dict[str, bool]  # requested outputs -> send as binary
    binary_default: bool


def _json_part(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        head, rest = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
            )
        head, rest = body[:header_length], body[header_length:]
    try:
        data = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    return data, rest


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise BadRequest(f"{where}.shape must be a list of non-negative integers, got {value!r}")
    if len(value) > MAX_DIMS:
        raise BadRequest(f"{where}.shape has {len(value)} dimensions; at most {MAX_DIMS}")
    return tuple(value)


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    value = item.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where}.parameters must be an object, got {value!r}")
    return value


def _decode_input(
    index: int, item: Any, binary: bytes, offset: int
) -> tuple[str, NDArray[Any], int]:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object with name, shape, datatype and data")
    name, datatype = item.get("name"), item.get("datatype")
    if not isinstance(name, str):
        raise BadRequest(f"{where}.name is missing")
    if not isinstance(datatype, str) or (datatype not in DATATYPES and datatype != BYTES):
        raise BadRequest(
            f"{where}.datatype {datatype!r} is not supported; use one of "
            f"{sorted([*DATATYPES, BYTES])}"
        )
    shape = _shape(item.get("shape"), where)
    if datatype == BYTES:
        return _decode_bytes(where, item, shape, binary, offset)
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise BadRequest(
            f"{where}.shape {list(shape)} has {count} elements; at most {MAX_ELEMENTS}"
        )
    size = _parameters(item, where).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest(f"{where}.parameters.binary_data_size {size!r} exceeds the body")
        if size != count * dtype.itemsize:
            raise BadRequest(
                f"{where}: {size} binary bytes do not hold shape {list(shape)} of {datatype}"
            )
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return name, array, offset + size
    if "data" not in item:
        raise BadRequest(f"{where} has neither data nor parameters.binary_data_size")
    try:
        array = np.asarray(item["data"], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"{where}.data does not hold {datatype} values: {exc}") from exc
    if array.size != count:
        raise BadRequest(
            f"{where}.data has {array.size} values but shape {list(shape)} needs {count}"
        )
    return name, array.reshape(shape), offset


def _text(value: bytes, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{where}: BYTES element is not UTF-8 text ({exc})") from exc


def _decode_bytes(
    where: str, item: dict[str, Any], shape: tuple[int, ...], binary: bytes, offset: int
) -> tuple[str, NDArray[Any], int]:
    """A BYTES tensor: JSON strings, or binary elements each led by its 4-byte length."""
    count = math.prod(shape)
    size = _parameters(item, where).get("binary_data_size")
    values: list[str] = []
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest(f"{where}.parameters.binary_data_size {size!r} exceeds the body")
        end, cursor = offset + size, offset
        while cursor < end:
            if cursor + 4 > end:
                raise BadRequest(f"{where}: a BYTES element's 4-byte length is cut off")
            length = int.from_bytes(binary[cursor : cursor + 4], "little")
            if cursor + 4 + length > end:
                raise BadRequest(f"{where}: a BYTES element of {length} bytes overruns the data")
            values.append(_text(binary[cursor + 4 : cursor + 4 + length], where))
            cursor += 4 + length
        offset = end
    else:
        data = item.get("data")
        flat = np.asarray(data, dtype=object).ravel().tolist() if data is not None else None
        if flat is None or not all(isinstance(v, str) for v in flat):
            raise BadRequest(f"{where}.data must hold strings for BYTES")
        values = flat
    if len(values) != count:
        raise BadRequest(f"{where} has {len(values)} strings but shape {list(shape)} needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = values
    return item["name"], array.reshape(shape), offset


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode a JSON or JSON+binary infer request."""
    data, binary = _json_part(body, header_length)
    items = data.get("inputs")
    if not isinstance(items, list) or not items:
        raise BadRequest("request needs a non-empty 'inputs' list")
    inputs: dict[str, NDArray[Any]] = {}
    offset = 0
    for index, item in enumerate(items):
        name, array, offset = _decode_input(index, item, binary, offset)
        inputs[name] = array
    params = _parameters(data, "request")
    binary_default = bool(params.get("binary_data_output", False))
    requested: dict[str, bool] = {}
    outputs = data.get("outputs") or []
    if not isinstance(outputs, list):
        raise BadRequest(f"outputs must be a list of objects with a name, got {outputs!r}")
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"outputs[{index}] must be an object with a name")
        flag = _parameters(item, f"outputs[{index}]").get("binary_data", binary_default)
        requested[item["name"]] = bool(flag)
    request_id = data.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        binary_outputs=requested,
        binary_default=binary_default,
    )


def check_inputs(
    inputs: Mapping[str, NDArray[Any]], signature: Sequence[TensorSpec]
) -> dict[str, NDArray[Any]]:
    """Inputs matched against the model's signature: names, datatypes, ranks, static dims."""
    expected = {spec.name: spec for spec in signature}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise BadRequest(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    checked = {}
    for spec in signature:
        if spec.name not in inputs:
            raise BadRequest(f"input {spec.name!r} is missing")
        array = inputs[spec.name]
        got = (
            BYTES
            if array.dtype == object
            else _BY_DTYPE.get(array.dtype.newbyteorder("<"), str(array.dtype))
        )
        if got != spec.datatype:
            raise BadRequest(
                f"input {spec.name!r}: datatype {got}, the model takes {spec.datatype}"
            )
        if array.ndim != len(spec.shape) or any(
            want not in (-1, have) for want, have in zip(spec.shape, array.shape, strict=True)
        ):
            raise BadRequest(
                f"input {spec.name!r}: shape {list(array.shape)} does not fit {list(spec.shape)}"
            )
        checked[spec.name] = array
    return checked


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, NDArray[Any]],
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary layout when any output is binary)."""
    names = list(request.binary_outputs) or list(outputs)
    parts: list[bytes] = []
    described = []
    for name in names:
        if name not in outputs:
            raise BadRequest(
                f"requested output {name!r} does not exist; outputs: {sorted(outputs)}"
            )
        array = np.ascontiguousarray(outputs[name])
        datatype = _BY_DTYPE.get(array.dtype.newbyteorder("<"))
        if datatype is None:
            raise BadRequest(
                f"output {name!r} is {array.dtype}, which v2 cannot encode; "
                f"datatypes: {sorted(DATATYPES)}"
            )
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.binary_outputs.get(name, request.binary_default):
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    document: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": described,
    }
    if request.id is not None:
        document["id"] = request.id
    head = json.dumps(document, separators=(",", ":")).encode()
    if not parts:
        return head, {"content-type": "application/json"}
    return head + b"".join(parts), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }


def model_metadata(
    name: str, versions: Sequence[str], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> dict[str, Any]:
    """GET /v2/models/{name}."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": "onnxruntime_onnx",
        "inputs": [t.to_json() for t in inputs],
        "outputs": [t.to_json() for t in outputs],
    }
