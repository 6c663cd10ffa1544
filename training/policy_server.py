"""``clap-data serve``: one policy answering observation → chunk over websockets, msgpack frames both ways.

The protocol (README, "Serving a policy"; :mod:`clap_data.training.policy_client` is its client): on connect the
server sends :func:`clap_data.training.policies.policy_metadata`; then every binary frame is one request
``{"type": "infer" | "ping", "request_id", "payload"}`` and gets exactly one answer, in order::

    {"status": "ok", "request_id": ..., "data": {"actions": float32 [32, 14], "subtask": str, "tokens": int16 [2·Nq]}}
    {"status": "error", "request_id": ... or None, "error": {"message": "a sentence"}}

``subtask`` and ``tokens`` are there when the policy gives them (CLAP-NTP does); a ping's ``data`` is ``{}``.
Arrays travel as :mod:`clap_data.training.msgpack_arrays` encodes them. A bad request (not msgpack, a text frame,
not a map, an unknown type, a missing field, a malformed image or state) and a refusal of the policy (an unknown
embodiment, a malformed answer of the model) are answered with the reason; an unexpected failure is answered as an
internal error and its traceback logged. None of them closes the connection: a robot's client keeps its socket.

Why a single-thread executor: the policy (a torch model and its processor) is not thread-safe, so requests are
computed one at a time, in arrival order across connections; running them off the event loop keeps the loop free,
so pings and other connections' frames are still read and answered while a chunk is being computed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.exceptions import ConnectionClosed

from clap_data.errors import ClapDataError
from clap_data.schemas.shards_v1 import ACTION_DIM
from clap_data.training.msgpack_arrays import decode_arrays, pack, unpack
from clap_data.training.policies import Policy, policy_metadata
from clap_data.training.policy_client import MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)
REQUEST_TYPES = ("infer", "ping")
PAYLOAD_FIELDS = ("images", "instruction", "embodiment", "state")
INTERNAL_ERROR = ("an internal error occurred in the policy server while answering this request "
                  "(the server's log has the traceback)")
Ready = Callable[[str, int], None]  # called with the host and the bound port once the server listens


def _describe(value: Any) -> str:
    return f"{value.dtype} {list(value.shape)}" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"


def _state(value: Any) -> np.ndarray:
    numbers = isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not (numbers or isinstance(value, np.ndarray) and value.dtype.kind in "iuf"):
        raise ClapDataError(f"state must be the 14 numbers of the canonical state, got {_describe(value)}")
    state = np.asarray(value, dtype=np.float64)
    if state.shape != (ACTION_DIM,):
        raise ClapDataError(f"state must be the 14 numbers of the canonical state, got {state.size} "
                            f"of shape {list(state.shape)}")
    if not np.isfinite(state).all():
        raise ClapDataError("state holds NaN or infinity; it must be 14 finite numbers")
    return state


def read_observation(payload: Any) -> dict[str, Any]:
    """An infer request's payload, checked, as ``Policy.predict``'s keyword arguments (other keys are ignored)."""
    if not isinstance(payload, dict):
        raise ClapDataError(f"an infer request needs a payload map with {', '.join(PAYLOAD_FIELDS)}")
    missing = [field for field in PAYLOAD_FIELDS if field not in payload]
    if missing:
        raise ClapDataError(f"the payload lacks {', '.join(missing)} "
                            f"(an infer payload holds {', '.join(PAYLOAD_FIELDS)})")
    payload = decode_arrays(payload)
    images = payload["images"]
    if not isinstance(images, dict) or not all(isinstance(camera, str) for camera in images):
        raise ClapDataError(f"images must be a map of camera name → H×W×3 uint8 array, got {_describe(images)}")
    for camera, image in images.items():
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ClapDataError(f"the {camera} image must be an H×W×3 uint8 array, got {_describe(image)}")
    for field in ("instruction", "embodiment"):
        if not isinstance(payload[field], str):
            raise ClapDataError(f"{field} must be a string, got {_describe(payload[field])}")
    return {"images": images, "instruction": payload["instruction"], "embodiment": payload["embodiment"],
            "state": _state(payload["state"])}


def _request_id(request: Any) -> str | int | None:
    """The id to echo: a string or an integer, else None (the request is then refused for the lack of one)."""
    request_id = request.get("request_id") if isinstance(request, dict) else None
    return request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None


def _chunk_data(result: dict[str, Any]) -> dict[str, Any]:
    data = {"actions": np.asarray(result["actions"], dtype=np.float32)}
    data.update({key: result[key] for key in ("subtask", "tokens") if key in result})
    return data


class PolicyServer:
    """One policy served to any number of connections, requests computed one at a time; it runs once."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.metadata = policy_metadata(policy)
        self.requests = self.errors = self.connections = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")

    async def _answer(self, request: Any, request_id: str | int | None) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise ClapDataError(f"a request must be a msgpack map with type, request_id and payload, "
                                f"got {_describe(request)}")
        kind = request.get("type")
        if kind not in REQUEST_TYPES:
            raise ClapDataError(f"unknown request type {kind!r}; the server answers {' and '.join(REQUEST_TYPES)}")
        if request_id is None:
            raise ClapDataError("the request has no request_id (a string or an integer) to answer to")
        if kind == "ping":
            return {}
        observation = read_observation(request.get("payload"))
        result = await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(self.policy.predict, **observation))
        return _chunk_data(result)

    async def respond(self, message: bytes | str) -> bytes:
        """The answer to one frame, packed; never raises (but for cancellation)."""
        self.requests += 1
        request_id = None
        try:
            if isinstance(message, str):
                raise ClapDataError("requests must be binary frames holding msgpack; this was a text frame")
            request = unpack(message, arrays=False)  # arrays later: a malformed one still gets its id echoed
            request_id = _request_id(request)
            return pack({"status": "ok", "request_id": request_id, "data": await self._answer(request, request_id)})
        except ClapDataError as exc:
            reason = str(exc)
        except Exception:
            logger.exception("request %r failed unexpectedly", request_id)
            reason = INTERNAL_ERROR
        self.errors += 1
        return pack({"status": "error", "request_id": request_id, "error": {"message": reason}})

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        peer = connection.remote_address
        logger.info("connection from %s opened", peer)
        try:
            await connection.send(pack(self.metadata))
            async for message in connection:
                await connection.send(await self.respond(message))
        except ConnectionClosed:
            pass  # the client went away, mid-answer or abruptly: nothing is left to answer
        logger.info("connection from %s closed", peer)

    async def _listen(self, host: str, port: int) -> Server:
        try:  # raw frames (no compression): pixels do not deflate well
            return await websockets_serve(self._handle, host, port, max_size=MAX_MESSAGE_BYTES, compression=None)
        except OSError as exc:
            raise ClapDataError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None

    async def run(self, host: str, port: int, stop: asyncio.Event, ready: Ready | None = None) -> None:
        """Listen on ``host:port`` (0: a free port) until ``stop`` is set, then close every connection."""
        try:
            async with await self._listen(host, port) as server:
                if ready is not None:
                    ready(host, server.sockets[0].getsockname()[1])
                await stop.wait()
        finally:
            self._executor.shutdown(wait=True)

    def summary(self) -> str:
        return (f"served {self.requests} request(s) on {self.connections} connection(s), "
                f"{self.errors} answered with an error")


def serve(policy: Policy, host: str = "127.0.0.1", port: int = 8000, ready: Ready | None = None) -> PolicyServer:
    """Serve ``policy`` until SIGINT or SIGTERM (main thread only), then return the server and its counts."""
    server = PolicyServer(policy)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await server.run(host, port, stop, ready)

    asyncio.run(main())
    return server


class ServerThread:
    """``with ServerThread(policy) as running: PolicyClient(running.url)``: a server on its own event loop in a
    background thread (tests, notebooks); ``port=0`` picks a free port, ``running.port`` is the bound one."""

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0) -> None:
        self.server = PolicyServer(policy)
        self.host, self.port, self.start_timeout = host, port, start_timeout
        self._listening = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="policy-server", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _on_ready(self, host: str, port: int) -> None:
        self.port = port
        self._listening.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await self.server.run(self.host, self.port, self._stop, self._on_ready)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to __enter__ (e.g. the port is taken)
            self._failure = exc
            self._listening.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._listening.wait(self.start_timeout):
            raise ClapDataError(f"the policy server did not start listening within {self.start_timeout} s")
        if isinstance(self._failure, ClapDataError):
            raise self._failure
        if self._failure is not None:
            raise ClapDataError(f"the policy server could not start on {self.host}:{self.port}: {self._failure}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
