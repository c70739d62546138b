"""The gateway's HTTP server lets no slow or idle client hold a connection (issue 16): a request
head that does not complete within gateway.header_timeout_s, sent at once or a byte at a time,
is disconnected, an idle keep-alive connection is closed after keep_alive_timeout_s, and beyond
max_connections a request is answered 503."""

from __future__ import annotations

import socket
import time

from tests.gateway.conftest import Stack

HEAD_S, IDLE_S = 1.0, 1
# Far beyond either timeout: reaching it means the server never closed the connection.
PATIENCE_S = 30.0


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    sock.settimeout(PATIENCE_S)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (socket.timeout if it never does)."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _response(sock: socket.socket) -> bytes:
    """One response (head and a Content-Length body) from a kept-alive connection."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {got!r}"
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


class TestHeadTimeout:
    def test_partial_head_is_disconnected(self, stack: Stack) -> None:
        """A request line and one header, never finished: the server closes the connection,
        having answered nothing."""
        gw = stack.gateway(header_timeout_s=HEAD_S)
        with _connect(gw.running.http_port) as sock:
            sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert _read_until_closed(sock) == b""

    def test_head_sent_a_byte_at_a_time_is_disconnected(self, stack: Stack) -> None:
        """A slowloris client that keeps sending header bytes is still cut off: the deadline is
        for the whole head, and new bytes do not extend it."""
        gw = stack.gateway(header_timeout_s=HEAD_S)
        head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 10_000
        closed = False
        with _connect(gw.running.http_port) as sock:
            for byte in head:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:  # reset or broken pipe: the server closed it
                    closed = True
                    break
                time.sleep(0.05)
            if not closed:
                sock.settimeout(PATIENCE_S)
                closed = _read_until_closed(sock) == b""
        assert closed, "the server kept reading a head for 10 000 x 50 ms"


class TestIdleTimeout:
    def test_idle_keep_alive_connection_is_closed(self, stack: Stack) -> None:
        """A connection serves two requests (kept alive), then, idle, is closed by the server."""
        gw = stack.gateway(keep_alive_timeout_s=IDLE_S, header_timeout_s=HEAD_S)
        with _connect(gw.running.http_port) as sock:
            for _ in range(2):
                sock.sendall(_request(gw.settings.gateway.path))
                head = _response(sock)
                assert head.startswith(b"HTTP/1.1 "), head
                assert b"connection: close" not in head.lower()
            assert _read_until_closed(sock) == b""


class TestConnectionCap:
    def test_requests_beyond_max_connections_get_503(self, stack: Stack) -> None:
        """With max_connections connections open, a request on one more is answered 503, and
        once they close requests are served again."""
        gw = stack.gateway(max_connections=2, header_timeout_s=PATIENCE_S)
        port, path = gw.running.http_port, gw.settings.gateway.path
        held = [_connect(port), _connect(port)]
        try:
            with _connect(port) as sock:
                sock.sendall(_request(path))
                assert _response(sock).startswith(b"HTTP/1.1 503"), "not refused"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + PATIENCE_S
        while True:  # the server notices the closed connections on its next loop turns
            with _connect(port) as sock:
                sock.sendall(_request(path))
                head = _response(sock)
            if not head.startswith(b"HTTP/1.1 503") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not head.startswith(b"HTTP/1.1 503"), head
