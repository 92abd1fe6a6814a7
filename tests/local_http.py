"""A local HTTP file server for the download tests: Range support and switchable faults.

Serves in-memory files on 127.0.0.1 (port 0, in a thread) and records every request's
path and Range header, so a test can assert a transfer was resumed where it stopped.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    """`with LocalServer({"/a.tar": data}) as server: download(server.url("/a.tar"), ...)`.

    Fault switches (per path):
    - `truncate_at[path] = n`: the next `truncate_requests` answers announce the full
      length but send only n bytes of the body, then close the connection;
    - `missing`: answer 404;
    - `wrong_bytes`: serve the file with every byte inverted (same length);
    - `ignore_range`: answer 200 with the whole file even to a Range request.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.truncate_at: dict[str, int] = {}
        self.truncate_requests = 1
        self.missing: set[str] = set()
        self.wrong_bytes: set[str] = set()
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        self._truncated: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        assert self._httpd is not None, "use the server inside `with`"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def ranges(self, path: str) -> list[str | None]:
        return [header for seen, header in self.requests if seen == path]

    def __enter__(self) -> "LocalServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        # A short poll interval: shutdown() waits for it, once per test.
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        range_header = handler.headers.get("Range")
        with self._lock:
            self.requests.append((path, range_header))
            truncate = None
            if path in self.truncate_at and self._truncated.get(path, 0) < self.truncate_requests:
                self._truncated[path] = self._truncated.get(path, 0) + 1
                truncate = self.truncate_at[path]
        if path in self.missing or path not in self.files:
            handler.send_error(404, "Not Found")
            return
        body = self.files[path]
        if path in self.wrong_bytes:
            body = bytes(255 - b for b in body)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and path not in self.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(body)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(body) - start))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        payload = body[start:] if truncate is None else body[start:start + truncate]
        handler.wfile.write(payload)
        handler.wfile.flush()
        handler.close_connection = True


def _handler_for(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            server._answer(self)

        def log_message(self, format: str, *args) -> None:  # keep pytest output clean
            pass

    return Handler
