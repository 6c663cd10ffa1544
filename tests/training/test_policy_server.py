"""``clap-data serve`` answered by an independent client (websockets + msgpack, the frames built here by hand, not
with our codec), by ``PolicyClient``, and as a subprocess of the CLI; the msgpack array codec; ``load_policy``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from clap_data.errors import ClapDataError
from clap_data.schemas import shards_v1 as S
from clap_data.training import NTPPolicy
from clap_data.training.msgpack_arrays import pack, unpack
from clap_data.training.ntp_data import ShardSet, iter_samples
from clap_data.training.policies import load_policy, policy_metadata
from clap_data.training.policy_client import PolicyClient
from clap_data.training.policy_server import INTERNAL_ERROR, ServerThread

CLI = [sys.executable, "-m", "clap_data.cli"]
LISTENING = re.compile(r"serving (\S+) \(clap-ntp\) on (ws://127\.0\.0\.1:\d+)$")
TIMEOUT = 120  # seconds for one answer: a chunk on 2 shared CPU cores
LAYOUT = [f"{arm}_{dof}" for arm in ("left", "right") for dof in ("x", "y", "z", "roll", "pitch", "yaw", "gripper")]


@pytest.fixture(scope="module")
def policy(trained) -> NTPPolicy:
    loaded = load_policy(trained[0].out, device="cpu")
    assert isinstance(loaded, NTPPolicy)
    return loaded


@pytest.fixture(scope="module")
def acting(policy, shards) -> tuple[dict, dict]:
    """The first held-out robot sample the tiny policy answers well (some of its answers are malformed) and the
    in-process ``predict`` of it, computed before any request reaches the server."""
    for sample in next(iter_samples(ShardSet.open(shards), S.HELDOUT_SPLIT, 64)):
        if sample[S.EMBODIMENT] == "human":
            continue
        try:
            return sample, policy.predict(sample["images"], sample[S.INSTRUCTION], sample[S.EMBODIMENT],
                                          sample[S.STATE])
        except ClapDataError:
            continue
    pytest.fail("no well-formed answer on the held-out robot samples")


@pytest.fixture(scope="module")
def running(policy, acting):
    with ServerThread(policy) as server:
        yield server


# --- the independent client: frames and arrays by hand --------------------------------------------------------

def _array(value: np.ndarray) -> dict[str, Any]:
    value = np.ascontiguousarray(value)
    return {"__ndarray__": True, "data": value.tobytes(), "dtype": value.dtype.str, "shape": list(value.shape)}


def _from_wire(encoded: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(encoded["data"], dtype=np.dtype(encoded["dtype"])).reshape(encoded["shape"])


def _payload(sample: dict, **changes: Any) -> dict[str, Any]:
    payload = {"images": {camera: _array(image) for camera, image in sample["images"].items()},
               "instruction": sample[S.INSTRUCTION], "embodiment": sample[S.EMBODIMENT],
               "state": [float(v) for v in sample[S.STATE]]}
    return {**payload, **changes}


def _ask(ws: Any, frame: bytes | str) -> dict[str, Any]:
    ws.send(frame)
    return msgpack.unpackb(ws.recv(timeout=TIMEOUT))


def _request(ws: Any, request: dict[str, Any]) -> dict[str, Any]:
    return _ask(ws, msgpack.packb(request))


def _open(url: str) -> tuple[Any, dict[str, Any]]:
    ws = connect(url, max_size=None, compression=None)
    return ws, msgpack.unpackb(ws.recv(timeout=TIMEOUT))


def test_metadata_on_connect_describes_the_checkpoint(running, trained):
    ckpt = Path(trained[0].out)
    training = json.loads((ckpt / "training.json").read_text())
    ws, metadata = _open(running.url)
    with ws:
        assert metadata == {
            "protocol": 1, "checkpoint": str(ckpt), "kind": "clap-ntp",
            "embodiments": {"S1-stationary": {"arm_mask": [True, True]}, "droid": {"arm_mask": [False, True]}},
            "cameras": ["head", "wrist_right", "wrist_left"], "chunk_size": 32, "action_dim": 14,
            "action_layout": LAYOUT, "act_vae_sha256": training["act_vae"]["checkpoint_sha256"],
        }
        robots = {name: entry for name, entry in training["embodiments"].items() if name != "human"}
        assert metadata["embodiments"] == robots


def test_infer_answers_the_chunk_predict_gives(running, acting):
    sample, expected = acting
    ws, _ = _open(running.url)
    with ws:
        answer = _request(ws, {"type": "infer", "request_id": "obs-1", "payload": _payload(sample)})
        assert answer["status"] == "ok" and answer["request_id"] == "obs-1", answer
        actions = answer["data"]["actions"]
        assert actions["dtype"] == "<f4" and actions["shape"] == [32, 14]
        assert np.array_equal(_from_wire(actions), expected["actions"].astype(np.float32))
        assert answer["data"]["subtask"] == expected["subtask"]
        assert np.array_equal(_from_wire(answer["data"]["tokens"]), expected["tokens"])
        assert _request(ws, {"type": "ping", "request_id": 7}) == {"status": "ok", "request_id": 7, "data": {}}


def test_bad_requests_are_answered_with_the_reason_and_the_connection_stays(running, acting):
    sample, _ = acting
    image = next(iter(sample["images"].values()))
    camera = next(iter(sample["images"]))
    short = _array(image)
    short["data"] = short["data"][:-1]

    def infer(request_id: str, **changes: Any) -> bytes:
        return msgpack.packb({"type": "infer", "request_id": request_id, "payload": _payload(sample, **changes)})

    cases = [
        (b"\xc1 not msgpack", None, "not valid msgpack"),
        ("a text frame", None, "this was a text frame"),
        (msgpack.packb([1, 2]), None, "must be a msgpack map with type, request_id and payload, got a list"),
        (msgpack.packb({"type": "infer", "payload": _payload(sample)}), None, "no request_id"),
        (msgpack.packb({"type": "infer", "request_id": "p0"}), "p0", "needs a payload map"),
        (msgpack.packb({"type": "infer", "request_id": "p1", "payload": {"images": {}}}), "p1",
         "the payload lacks instruction, embodiment, state"),
        (msgpack.packb({"type": "act", "request_id": "t"}), "t", "unknown request type 'act'"),
        (infer("d", images={camera: _array(image.astype(np.float32))}), "d",
         f"the {camera} image must be an H×W×3 uint8 array, got float32 {list(image.shape)}"),
        (infer("s", images={camera: _array(image[:, :, 0])}), "s",
         f"the {camera} image must be an H×W×3 uint8 array, got uint8 {list(image.shape[:2])}"),
        (infer("l", images={camera: image.tolist()}), "l", "got a list"),
        (infer("b", images={camera: short}), "b", f"needs {image.size} bytes of data, got {image.size - 1}"),
        (infer("o", state={**_array(np.zeros(14)), "dtype": "|O"}), "o", "'|O' are refused"),
        (infer("13", state=[0.0] * 13), "13", "state must be the 14 numbers of the canonical state, got 13"),
        (infer("nan", state=[float("nan")] + [0.0] * 13), "nan", "state holds NaN"),
        (infer("i", instruction=3), "i", "instruction must be a string"),
        (infer("c", images={"wrist_middle": _array(image)}), "c", "unknown camera(s) wrist_middle"),
        (infer("f", embodiment="franka"), "f", "was not trained on embodiment 'franka'"),
        (infer("h", embodiment="human"), "h", "human is not a robot"),
    ]
    ws, _ = _open(running.url)
    with ws:
        for frame, request_id, reason in cases:
            answer = _ask(ws, frame)
            assert answer["status"] == "error" and answer["request_id"] == request_id, (reason, answer)
            assert reason in answer["error"]["message"], (reason, answer)
        assert _request(ws, {"type": "ping", "request_id": "after"}) == {"status": "ok", "request_id": "after",
                                                                         "data": {}}


def test_policy_failures_are_answered_not_dropped(running, policy, acting, monkeypatch):
    sample, _ = acting
    request = {"type": "infer", "request_id": "m", "payload": _payload(sample)}
    malformed = "Subtask: lift it\nAction: <ACT_1><ACT_2><ACT_3>"
    monkeypatch.setattr(policy, "generate", lambda prompts: [malformed])
    with pytest.raises(ClapDataError) as in_process:
        policy.predict(sample["images"], sample[S.INSTRUCTION], sample[S.EMBODIMENT], sample[S.STATE])
    ws, _ = _open(running.url)
    with ws:
        answer = _request(ws, request)
        assert answer == {"status": "error", "request_id": "m", "error": {"message": str(in_process.value)}}
        monkeypatch.setattr(policy, "predict", lambda **_: 1 / 0)
        assert _request(ws, request)["error"]["message"] == INTERNAL_ERROR
        assert _request(ws, {"type": "ping", "request_id": "p"})["status"] == "ok"


def test_pings_are_answered_while_another_connection_waits_for_its_chunk(running, policy, acting, monkeypatch):
    sample, expected = acting
    computing, release = threading.Event(), threading.Event()

    def slow_predict(**_: Any) -> dict[str, Any]:
        computing.set()
        assert release.wait(TIMEOUT)
        return expected

    monkeypatch.setattr(policy, "predict", slow_predict)
    acting_ws, _ = _open(running.url)
    pinging_ws, _ = _open(running.url)
    with acting_ws, pinging_ws:
        acting_ws.send(msgpack.packb({"type": "infer", "request_id": "slow", "payload": _payload(sample)}))
        assert computing.wait(TIMEOUT)
        assert _request(pinging_ws, {"type": "ping", "request_id": "meanwhile"})["status"] == "ok"
        release.set()
        assert msgpack.unpackb(acting_ws.recv(timeout=TIMEOUT))["request_id"] == "slow"


# --- our client ----------------------------------------------------------------------------------------------

def _client_round_trip(url: str, sample: dict, expected: dict) -> None:
    with PolicyClient(url, timeout=TIMEOUT) as client:
        out = client.infer(sample["images"], sample[S.INSTRUCTION], sample[S.EMBODIMENT],
                           np.asarray(sample[S.STATE]))
        assert out["actions"].dtype == np.float32 and out["actions"].shape == (32, 14)
        assert np.array_equal(out["actions"], expected["actions"].astype(np.float32))
        assert client.ping() > 0


def test_policy_client_round_trip(running, policy, acting):
    sample, expected = acting
    _client_round_trip(running.url, sample, expected)
    with PolicyClient(running.url, timeout=TIMEOUT) as client:
        assert client.metadata == policy_metadata(policy)
        with pytest.raises(ClapDataError, match="was not trained on embodiment 'franka'"):
            client.infer(sample["images"], "wave", "franka", np.zeros(14))
        client.ping()  # the refusal left the connection usable
    with pytest.raises(ClapDataError, match="cannot connect to the policy server at ws://127.0.0.1:1"):
        PolicyClient("ws://127.0.0.1:1", timeout=5)


# --- the command ---------------------------------------------------------------------------------------------

def test_serve_command_answers_then_stops_on_sigterm(trained, acting):
    sample, expected = acting
    ckpt = trained[0].out
    process = subprocess.Popen([*CLI, "serve", "--ckpt", ckpt, "--port", "0", "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline().strip()
        listening = LISTENING.match(first)
        assert listening and listening[1] == ckpt, (first, process.poll(), process.stderr.read())
        _client_round_trip(listening[2], sample, expected)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.strip() == "stopped: served 2 request(s) on 1 connection(s), 0 answered with an error"


def test_load_policy_names_the_kinds_it_knows(tmp_path):
    (tmp_path / "training.json").write_text(json.dumps({"kind": "clap-dit"}))
    with pytest.raises(ClapDataError, match=f"{tmp_path} is not a policy checkpoint .* names kind 'clap-dit'; "
                                            "known kinds: clap-ntp, clap-rf"):
        load_policy(tmp_path)
    with pytest.raises(ClapDataError, match="no training.json names its kind"):
        load_policy(tmp_path / "missing")


# --- the codec -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
    np.linspace(-1, 1, 32 * 14, dtype=np.float32).reshape(32, 14),
    np.array([1.5, -2.25, np.inf]),
    np.array([[1, -2], [3, 4]], dtype=np.int16),
    np.array([True, False, True]),
    np.array(7, dtype=np.int64),
    np.zeros((0, 3), dtype=np.float32),
    np.arange(12, dtype=">f4").reshape(3, 4),
    np.arange(12, dtype=np.int32).reshape(3, 4).T,  # not C-contiguous
    np.array([1 + 2j], dtype=np.complex64),
], ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
def test_arrays_round_trip(array):
    back = unpack(pack({"nested": [array, {"again": array}], "n": np.float32(0.5), "i": np.int64(3)}))
    for got in (back["nested"][0], back["nested"][1]["again"]):
        assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)
        assert got.flags.writeable
    assert back["n"] == 0.5 and back["i"] == 3 and type(back["i"]) is int
    wire = msgpack.unpackb(pack(array))  # the documented encoding, read without our codec
    assert wire == {"__ndarray__": True, "data": np.ascontiguousarray(array).tobytes(), "dtype": array.dtype.str,
                    "shape": list(array.shape)}


def _encoded(**changes: Any) -> bytes:
    return msgpack.packb({**_array(np.zeros(3, dtype=np.float32)), **changes})


@pytest.mark.parametrize(("data", "reason"), [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb(1) + msgpack.packb(2), "not valid msgpack"),
    (_encoded(dtype="|O"), "'|O' are refused: only bool and numeric"),
    (_encoded(dtype="<U3"), "'<U3' are refused"),
    (_encoded(dtype="f4,i4"), "'f4,i4' are refused"),
    (_encoded(dtype="nonsense"), "'nonsense' is not a numpy dtype"),
    (_encoded(data=b"\0" * 11), r"<f4 array of shape \[3\] needs 12 bytes of data, got 11"),
    (_encoded(shape=[-3]), "must be non-negative integers"),
    (_encoded(shape="3"), "needs data \\(bytes\\), dtype \\(a string\\) and shape \\(a list\\)"),
    (_encoded(data="text"), "needs data \\(bytes\\)"),
])
def test_unpack_refuses_what_it_cannot_trust(data, reason):
    with pytest.raises(ClapDataError, match=reason):
        unpack(data)


def test_pack_refuses_objects():
    with pytest.raises(ClapDataError, match="dtype object: only bool and numeric"):
        pack({"a": np.array([None])})
    with pytest.raises(ClapDataError, match="cannot pack .* type set"):
        pack({1, 2})
