"""Bounded connections: the listening socket, and a uvicorn server with the limits it lacks.

Request headers over 16 KiB get 431; headers not complete within 10 s, or a body not complete
within 30 s, get 408, and the connection is closed. uvicorn is imported only when a server is
built.
"""

import asyncio
import json
import socket

from ..errors import ContinualError

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
MAX_HEADER_BYTES = 16 * 1024


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as failure:
        sock.close()
        raise ContinualError(f"cannot listen on {host}:{port}: {failure.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def build_server(
    app,
    sock: socket.socket,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
):
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[sock])``.

    Its connections answer 431 to headers over ``max_header_bytes``, and 408 (then close)
    where the headers take over ``header_timeout`` seconds or the body over ``body_timeout``.
    """
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=_bounded_protocol(header_timeout, body_timeout, max_header_bytes),
        h11_max_incomplete_event_size=max_header_bytes,
    )
    return uvicorn.Server(config)


def _bounded_protocol(header_timeout: float, body_timeout: float, max_header_bytes: int):
    """uvicorn's HTTP/1.1 protocol with the limits it lacks: read timeouts, 431 for headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        # A timer runs while a request's headers, then its body, are being read: from the
        # connection's start (an idle socket) or a new request's first byte, until h11 has the
        # whole request. Bytes trickling in do not reset it.
        _timer: asyncio.TimerHandle | None = None
        _phase = ""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm("headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:  # reading a request's headers
                if self._timer is None:
                    self._arm("headers")
                # h11 bounds only headers still incomplete; these may all come in one read.
                buffered = self.conn.trailing_data[0] + data
                end = buffered.find(b"\r\n\r\n")
                if (end if end >= 0 else len(buffered)) > max_header_bytes:
                    self._refuse(431, f"request headers over {max_header_bytes} bytes")
                    return
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                if self._phase != "body":
                    self._arm("body")
            elif state is not h11.IDLE:  # the request is read (or the connection failed)
                self._disarm()

        def _arm(self, phase: str) -> None:
            self._disarm()
            timeout = header_timeout if phase == "headers" else body_timeout
            self._phase = phase
            self._timer = self.loop.call_later(timeout, self._expired, phase, timeout)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._phase = None, ""

        def _expired(self, phase: str, timeout: float) -> None:
            self._timer, self._phase = None, ""
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if cycle.response_started:
                    self.transport.close()
                    return
                cycle.disconnected = True  # the app's request.stream() ends; its answer is dropped
                cycle.message_event.set()
            self._refuse(408, f"the request {phase} did not arrive within {timeout:g} s")

        def _refuse(self, status: int, message: str) -> None:
            # Written raw: h11 may not send a response before it has read a request.
            body = json.dumps({"error": message}).encode()
            reason = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            self.transport.close()

    return BoundedH11Protocol
