"""A malicious Prover against the client (issue 21, items 11-13): what one reply may cost.

Gzip bombs and oversized replies (``httpx.MockTransport`` with a streamed body, so nothing is
read before the client reads it), an endless reply and a drip over a real socket on loopback
(a server thread that answers one way and records when the client hangs up), a ``.npy`` whose
header announces far more than its signed reference. Memory is measured with ``tracemalloc``
(allocations, not time); the drip tests wait for the client to give up, never for a clock.
"""

from __future__ import annotations

import hashlib
import io
import socketserver
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.lib import format as npy_format
from typer.testing import CliRunner

from protocol.errors import BadResponseError, MalformedResponseError
from protocol.messages import ArrayRef, array_to_npy
from protocol.npy import read_npy_header
from protocol.signing import generate_key, save_private_key
from verifier_client.api import verify
from verifier_client.cli import app
from verifier_client.client import ProverClient, TransportError
from verifier_client.limits import prover_http

MIB = 2**20


def gzip_chunks(mib: int, piece: int = 64 * 1024) -> list[bytes]:
    """A gzip stream of ``mib`` MiB of zeros, cut in ``piece``-byte chunks."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = b"".join(comp.compress(bytes(MIB)) for _ in range(mib)) + comp.flush()
    return [data[i : i + piece] for i in range(0, len(data), piece)]


class Counted(httpx.SyncByteStream):
    """A reply body handed out chunk by chunk, counting what the client pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.pulled = chunks, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.pulled += len(chunk)
            yield chunk


def _mock(reply: Callable[[httpx.Request], httpx.Response]) -> tuple[ProverClient, list[str]]:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return reply(request)

    http = prover_http("http://p", 30, httpx.MockTransport(handle))
    return ProverClient(http), seen


def _peak(call: Callable[[], object], error: type[Exception]) -> tuple[int, Exception]:
    """Run ``call``, which must raise ``error``; the peak of memory traced meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(error) as caught:
            call()
        return tracemalloc.get_traced_memory()[1], caught.value
    finally:
        tracemalloc.stop()


REF = ArrayRef(name="values", sha256="ab" * 32, dtype="<f8", shape=(64, 2))


# -- item 11: a cap on every reply, decompressed too --------------------------------------------
def test_a_gzip_bomb_on_an_array_costs_at_most_the_arrays_size() -> None:
    body = Counted(gzip_chunks(256))  # 256 MiB of zeros in 256 KiB on the wire
    client, _ = _mock(lambda r: httpx.Response(200, headers={"content-encoding": "gzip"},
                                               stream=body))  # fmt: skip
    peak, exc = _peak(lambda: client.array(REF, (64, 2)), BadResponseError)
    assert "bytes" in str(exc) and peak < 8 * MIB  # main: ~2 x 256 MiB
    assert body.pulled < sum(map(len, body.chunks))  # it stopped reading


def test_a_gzip_bomb_on_info_stops_at_the_json_limit() -> None:
    body = Counted(gzip_chunks(256))
    client, _ = _mock(lambda r: httpx.Response(200, headers={
        "content-encoding": "gzip", "content-type": "application/json"}, stream=body))  # fmt: skip
    peak, exc = _peak(client.info, MalformedResponseError)
    assert "8,388,608 bytes" in str(exc) and peak < 48 * MIB


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    body = Counted([bytes(1024)] * 64)
    client, _ = _mock(lambda r: httpx.Response(200, headers={"content-length": str(64 * 1024)},
                                               stream=body))  # fmt: skip
    with pytest.raises(BadResponseError, match="65,536 bytes"):
        client.array(REF, (64, 2))
    assert body.pulled == 0


def test_a_coding_not_asked_for_is_malformed_and_gzip_within_the_cap_is_read() -> None:
    doc = b'{"id": "j", "kind": "challenge", "status": "running", "done": 1, "total": 2, ' \
          b'"result": null, "error": null}'  # fmt: skip
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    packed = gz.compress(doc) + gz.flush()
    for coding, data, ok in (("br", doc, False), ("gzip", packed, True)):
        client, _ = _mock(lambda r, c=coding, d=data: httpx.Response(200, headers={
            "content-encoding": c, "content-type": "application/json"},
            stream=Counted([d])))  # fmt: skip
        if ok:
            assert client.job("j").done == 1
        else:
            with pytest.raises(MalformedResponseError, match="content-encoding 'br'"):
                client.job("j")


# -- real sockets: an endless reply, a drip -----------------------------------------------------
class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        try:
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            server.answer(self, server)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            server.hung_up.set()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Callable[[_Handler, _Server], None]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.sent = 0
        self.hung_up = threading.Event()  # the connection ended (the client gave up)
        self.stop = threading.Event()

    def write(self, handler: _Handler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        self.sent += len(data)


@contextmanager
def malicious(answer: Callable[[_Handler, _Server], None]) -> Iterator[tuple[str, _Server]]:
    server = _Server(answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def endless(handler: _Handler, server: _Server) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    server.write(handler, head + b"1\r\n[\r\n")
    chunk = b"0," * 32768
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while server.sent < 1024 * MIB and not server.stop.is_set():  # bounded: a test must end
        server.write(handler, frame)


def test_an_endless_reply_is_cut_at_the_json_limit() -> None:
    with malicious(endless) as (url, server), prover_http(url, 30) as http:
        with pytest.raises(MalformedResponseError, match="8,388,608 bytes"):
            ProverClient(http).info()
        assert server.hung_up.wait(300)
        assert server.sent < 64 * MIB  # what it read, plus the sockets' buffers


def drip(where: str) -> Callable[[_Handler, _Server], None]:
    """One byte every 50 ms of the headers or of the body, for at most 3,000 bytes."""

    def answer(handler: _Handler, server: _Server) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3000\r\n\r\n"
        body = b" " * 3000
        if where == "body":
            server.write(handler, head)
        for i in range(3000):
            data = head + body if where == "headers" else body
            server.write(handler, data[i : i + 1])
            if server.stop.wait(0.05):
                return

    return answer


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_drip_ends_at_the_requests_deadline(where: str) -> None:
    # item 12: every byte comes well within the 30 s read time-out; only a deadline ends it
    with malicious(drip(where)) as (url, server), prover_http(url, 30) as http:
        with pytest.raises(TransportError, match="within the request's 0.5 s"):
            ProverClient(http, deadline_s=0.5).session("0" * 32)
        assert server.hung_up.wait(300)
        assert server.sent < 3000


def test_verify_gives_up_on_a_drip_at_its_time_out(tmp_path: Path) -> None:
    with malicious(drip("headers")) as (url, server):
        with pytest.raises(TransportError, match="within the request's 0.5 s"):
            verify(url, "planted", 0.5, key=generate_key(), db=f"sqlite:///{tmp_path}/v.db",
                   timeout_s=0.5)  # fmt: skip
        assert server.hung_up.wait(300)


def test_the_command_line_reports_a_bomb_on_info_in_one_line(tmp_path: Path) -> None:
    bomb = b"".join(gzip_chunks(64))

    def answer(handler: _Handler, server: _Server) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        server.write(handler, head + b"content-length: %d\r\n\r\n" % len(bomb) + bomb)

    save_private_key(generate_key(), tmp_path / "v.key")
    with malicious(answer) as (url, _):
        args = ["verify", "--prover", url, "--task", "planted", "--epsilon", "0.5",
                "--key", str(tmp_path / "v.key"), "--db", str(tmp_path / "v.db"),
                "--no-progress"]  # fmt: skip
        out = CliRunner().invoke(app, args)
    assert out.exit_code == 2 and "8,388,608 bytes" in out.output
    assert "Traceback" not in out.output


# -- item 13: a .npy announcing a huge array ----------------------------------------------------
def forged(data: bytes, shape: tuple[int, ...]) -> bytes:
    """``data``'s array under a .npy header announcing ``shape``."""
    head = read_npy_header(data)
    buf = io.BytesIO()
    meta = {"descr": head.dtype, "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buf, meta)
    return buf.getvalue() + data[head.offset :]


def test_a_npy_header_announcing_8_tib_is_refused_before_allocating() -> None:
    ref, data = array_to_npy("values", np.zeros((64, 2)))
    lie = forged(data, (2**20, 2**20))
    signed = ref.model_copy(update={"sha256": hashlib.sha256(lie).hexdigest()})
    client, _ = _mock(lambda r: httpx.Response(200, stream=Counted([lie])))
    peak, exc = _peak(lambda: client.values(signed, (64, 2), 1.0), BadResponseError)
    assert "(1048576, 1048576)" in str(exc) and peak < 8 * MIB  # main: MemoryError
    assert np.load(io.BytesIO(data)).shape == (64, 2)  # the honest bytes still parse


def test_a_signed_shape_other_than_expected_is_refused_before_downloading() -> None:
    huge = REF.model_copy(update={"shape": (2**20, 2**20)})
    client, seen = _mock(lambda r: httpx.Response(200, stream=Counted([b""])))
    with pytest.raises(BadResponseError, match="expected \\(64, 2\\)"):
        client.values(huge, (64, 2), 1.0)
    with pytest.raises(BadResponseError, match="expected \\(64, \\*\\)"):
        client.array(huge, (64, None))
    assert seen == []
