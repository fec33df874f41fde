"""The v2 codec: JSON and binary tensors in, JSON and binary tensors out."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from serving.errors import BadRequest
from serving.protocols.v2 import (
    TensorSpec,
    check_inputs,
    encode_infer_response,
    parse_infer_request,
)

SIGNATURE = (TensorSpec("input_values", "FP32", (-1, -1)),)


def _bytes_head(size: int) -> bytes:
    """The JSON part of a request with one binary BYTES input of ``size`` bytes."""
    item = {"name": "text", "shape": [1], "datatype": "BYTES"}
    return json.dumps({"inputs": [item | {"parameters": {"binary_data_size": size}}]}).encode()


def _bytes_body(data: bytes) -> bytes:
    return _bytes_head(len(data)) + data


def test_json_inputs() -> None:
    body = json.dumps(
        {
            "id": "7",
            "inputs": [
                {"name": "input_values", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
            ],
        }
    ).encode()
    request = parse_infer_request(body, None)
    assert request.id == "7"
    assert request.inputs["input_values"].tolist() == [[1.0, 2.0, 3.0]]
    check_inputs(request.inputs, SIGNATURE)


def test_binary_inputs_and_outputs_round_trip() -> None:
    clip = np.arange(6, dtype="<f4").reshape(1, 6)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_values",
                    "shape": [1, 6],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": clip.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    request = parse_infer_request(head + clip.tobytes(), len(head))
    assert np.array_equal(request.inputs["input_values"], clip)
    logits = np.array([[0.5, -0.5]], dtype=np.float32)
    body, headers = encode_infer_response(
        model_name="m", model_version="stable", request=request, outputs={"logits": logits}
    )
    length = int(headers["inference-header-content-length"])
    meta = json.loads(body[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert np.array_equal(np.frombuffer(body[length:], dtype="<f4").reshape(1, 2), logits)


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty 'inputs'"),
        (
            b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]}',
            None,
            "has 1 values but shape [2] needs 2",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "COMPLEX", "data": [1]}]}',
            None,
            "datatype 'COMPLEX' is not supported",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
            b'"parameters": {"binary_data_size": 4}}]}',
            None,
            "exceeds the body",
        ),
        (b'{"inputs": []}', 99, "the body has 14 bytes"),
        (
            b'{"inputs": [{"name": "x", "shape": [4294967296, 4294967296], "datatype": "FP32", '
            b'"data": []}]}',
            None,
            "elements; at most",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [' + b",".join([b"1"] * 65) + b"], "
            b'"datatype": "FP32", "data": [1]}]}',
            None,
            "inputs[0].shape has 65 dimensions; at most 32",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [], "datatype": {}, "data": null}]}',
            None,
            "inputs[0].datatype {} is not supported",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], '
            b'"parameters": [1]}]}',
            None,
            "inputs[0].parameters must be an object",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
            b'"parameters": "binary"}',
            None,
            "request.parameters must be an object",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
            b'"outputs": [{"name": "y", "parameters": 7}]}',
            None,
            "outputs[0].parameters must be an object",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
            b'"outputs": {"name": "y"}}',
            None,
            "outputs must be a list",
        ),
        *(
            (_bytes_body(data), len(_bytes_head(len(data))), message)
            for data, message in [
                ((9).to_bytes(4, "little") + b"abc", "a BYTES element of 9 bytes overruns"),
                (b"\x03\x00", "a BYTES element's 4-byte length is cut off"),
                ((2).to_bytes(4, "little") + b"\xff\xfe", "BYTES element is not UTF-8 text"),
            ]
        ),
        (
            b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]}',
            None,
            "inputs[0].data must hold strings for BYTES",
        ),
    ],
)
def test_malformed_requests_say_what_is_wrong(
    body: bytes, length: int | None, message: str
) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_infer_request(body, length)


def test_signature_checks_name_dtype_and_rank() -> None:
    with pytest.raises(BadRequest, match=r"unknown input\(s\) \['x'\]"):
        check_inputs({"x": np.zeros((1, 2), np.float32)}, SIGNATURE)
    with pytest.raises(BadRequest, match="datatype FP64, the model takes FP32"):
        check_inputs({"input_values": np.zeros((1, 2))}, SIGNATURE)
    with pytest.raises(BadRequest, match=r"shape \[2\] does not fit \[-1, -1\]"):
        check_inputs({"input_values": np.zeros(2, np.float32)}, SIGNATURE)


def test_an_output_the_codec_cannot_encode_is_a_400_naming_it() -> None:
    request = parse_infer_request(
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', None
    )
    with pytest.raises(BadRequest, match="output 'z' is complex64, which v2 cannot encode"):
        encode_infer_response(
            model_name="m",
            model_version="v",
            request=request,
            outputs={"z": np.zeros(2, np.complex64)},
        )
