"""A loopback HTTP file server for download tests: files with Range support (206, 416), redirects,
JSON answers, extra headers, transfers cut short on purpose, and a log of every request's headers."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FileServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}       # path -> Location (may use {base} / {other})
        self.json: dict[str, object] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.cut: dict[str, list[int]] = {}       # path -> bytes sent by each next request, then the connection drops
        self.log: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urlsplit(self.path).path
                server.log.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                extra = server.headers.get(path, {})
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path].format(base=server.base, other=server.other))
                    self._finish_empty(extra)
                elif path in server.json:
                    body = json.dumps(server.json[path]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self._headers(extra)
                    self.wfile.write(body)
                elif path in server.files:
                    self._file(path, server.files[path], extra)
                else:
                    self.send_response(404)
                    self._finish_empty(extra)

            def _headers(self, extra):
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()

            def _finish_empty(self, extra):
                self.send_header("Content-Length", "0")
                self._headers(extra)

            def _file(self, path, data, extra):
                m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                start = int(m.group(1)) if m else 0
                if start >= len(data) and m:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self._finish_empty(extra)
                    return
                body = data[start:]
                self.send_response(206 if m else 200)
                if m:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self._headers(extra)
                cuts = server.cut.get(path)
                if cuts:
                    self.wfile.write(body[:cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{port}"
        self.other = f"http://localhost:{port}"  # the same server under another host name
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests_to(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.log if urlsplit(p).path == path]
