"""A blocking client of ``clap-data serve``: observation in, chunk of 32 absolute actions out.

    from clap_data.training.policy_client import PolicyClient

    with PolicyClient("ws://127.0.0.1:8000") as client:
        client.metadata["embodiments"]                        # what the server acts for
        out = client.infer({"head": rgb}, "pick up the cup", "S1-stationary", state14)
        out["actions"]                                        # float32 [32, 14]

The protocol (README, "Serving a policy") lives in two places only: here, its light end (numpy, msgpack and
websockets; no torch, so a robot's control process can import it), and in the server. Every request carries a new
request id and its answer is checked against it; an error answer raises :class:`ClapDataError` with the server's
sentence, so a served policy fails as an in-process one does. The client is synchronous because a control loop is:
one observation, one chunk.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from clap_data.errors import ClapDataError
from clap_data.training.msgpack_arrays import pack, unpack

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 2**20  # three 1080p RGB frames fit; websockets' default (1 MiB), one VGA frame


class PolicyClient:
    """One websocket connection to a policy server; ``metadata`` is the server's first message."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url, self.timeout = url, timeout
        try:
            self._ws = connect(url, open_timeout=timeout, max_size=MAX_MESSAGE_BYTES, compression=None)
        except (OSError, WebSocketException) as exc:
            raise ClapDataError(f"cannot connect to the policy server at {url} ({type(exc).__name__}: {exc})") from None
        self.metadata: dict[str, Any] = self._receive()
        if not isinstance(self.metadata, dict) or self.metadata.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise ClapDataError(f"{url} does not speak version {PROTOCOL_VERSION} of the clap-data policy protocol")

    def _receive(self) -> Any:
        try:
            return unpack(self._ws.recv(self.timeout, decode=False))
        except TimeoutError:
            self.close()  # the late answer would be read as the next request's: this connection is done
            raise ClapDataError(f"the policy server at {self.url} did not answer within {self.timeout} s; "
                                "the connection is closed (make a new client)") from None
        except ConnectionClosed as exc:
            raise ClapDataError(f"the policy server at {self.url} closed the connection ({exc})") from None

    def _request(self, kind: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        try:
            self._ws.send(pack({"type": kind, "request_id": request_id, "payload": payload or {}}))
        except ConnectionClosed as exc:
            raise ClapDataError(f"the policy server at {self.url} closed the connection ({exc})") from None
        reply = self._receive()
        if not isinstance(reply, dict) or reply.get("request_id") != request_id:
            got = reply.get("request_id") if isinstance(reply, dict) else type(reply).__name__
            raise ClapDataError(f"the policy server at {self.url} answered {got!r} to request {request_id}")
        if reply.get("status") != "ok":
            error = reply.get("error")
            raise ClapDataError(str(error.get("message")) if isinstance(error, dict) else
                                f"the policy server at {self.url} refused request {request_id} without a reason")
        return reply.get("data", {})

    def infer(self, images: Mapping[str, np.ndarray], instruction: str, embodiment: str,
              state: Any) -> dict[str, Any]:
        """The chunk for one observation: ``actions`` float32 [32, 14] (and ``subtask``, ``tokens`` when the policy
        gives them); images: camera → H×W×3 uint8; state: the 14-D canonical state."""
        payload = {"images": {camera: np.asarray(image) for camera, image in images.items()},
                   "instruction": instruction, "embodiment": embodiment,
                   "state": np.asarray(state, dtype=np.float64)}
        return self._request("infer", payload)

    def ping(self) -> float:
        """The round trip of a ping request, in seconds (the server answers it while another client's chunk is
        being computed)."""
        started = time.perf_counter()
        self._request("ping")
        return time.perf_counter() - started

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
