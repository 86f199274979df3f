"""Trace files that cannot be read: one line naming the file, a UserError (a ValueError)."""
from __future__ import annotations

import numpy as np
import pytest

from heteromoe.cli import main
from heteromoe.errors import UserError
from heteromoe.routing import load_trace
from heteromoe.routing.traces import TraceError, load_dynande, load_exflow, load_jsonl

GARBAGE = bytes(range(128, 256)) * 4


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    message = str(err.value)
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    assert "\n" not in message and str(path) in message
    return message


def test_garbage_bytes_jsonl_names_the_file(tmp_path):
    path = tmp_path / "routes.jsonl"
    path.write_bytes(GARBAGE)
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert "not UTF-8 text" in _one_line(err, path)


def test_garbage_bytes_npy_names_the_file(tmp_path):
    path = tmp_path / "trace.npy"
    path.write_bytes(GARBAGE)
    with pytest.raises(TraceError) as err:
        load_exflow(path)
    assert "not a NumPy .npy array" in _one_line(err, path)
    with pytest.raises(TraceError):
        load_trace(tmp_path)  # the folder form of the same file


def test_wrong_array_dtype_and_shape_name_the_file(tmp_path):
    path = tmp_path / "trace.npy"
    np.save(path, np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(TraceError, match="must be integers") as err:
        load_trace(path)
    _one_line(err, path)
    np.save(tmp_path / "decode_topk_ids.npy", np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(TraceError, match=r"expected \[positions, layers, seqs, k\]") as err:
        load_dynande(tmp_path)


def test_missing_trace_is_one_line(tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(TraceError, match="no such file or folder") as err:
        load_trace(missing)
    _one_line(err, missing)
    with pytest.raises(TraceError, match="cannot be read") as err:
        load_jsonl(missing)
    _one_line(err, missing)


def test_json_that_is_not_an_object_names_file_and_line(tmp_path):
    path = tmp_path / "routes.jsonl"
    path.write_text('{"type": "meta", "num_experts": 8}\n[1, 2]\n')
    with pytest.raises(TraceError, match="line 2 is not a JSON object") as err:
        load_trace(path)
    _one_line(err, path)


@pytest.mark.parametrize("content", [None, GARBAGE])
def test_cli_prints_a_bad_trace_as_one_line(tmp_path, capsys, content):
    path = tmp_path / "routes.jsonl"
    if content is not None:
        path.write_bytes(content)
    assert main(["simulate", "--quiet", "--model", "qwen3-30b-a3b", "--system", "b200-hbm3e-pim", "--batch", "1",
                 "--policies", "sieve", "--steps", "1", "--trace", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and err.count("\n") == 1 and "Traceback" not in err
