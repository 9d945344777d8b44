"""The read-only HTTP side of the analytics process: the journey page and its JSON.

| path | what |
|---|---|
| ``/`` | the journey page (``static/``: HTML, CSS and JS shipped in the package, no CDN) |
| ``/api/journeys`` | every journey's headline figures, dead letters, the stream's rate and lag |
| ``/api/journeys/<id>`` | one journey: funnel, paths, time in stage, exits, actions, last actions |
| ``/api/overview`` | both at once, every journey in full (what ``percorso demo`` draws) |
| ``/healthz`` | the process is up |

Only GET and HEAD; anything else is answered 405.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from percorso.analytics.aggregator import Aggregator
from percorso.analytics.stream import Stream
from percorso.analytics.workers import WorkerMetrics

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


@dataclass
class Views:
    """Builds the JSON documents from the live parts of the process."""

    aggregator: Aggregator
    stream: Stream
    workers: WorkerMetrics
    names: dict[str, str]

    def journeys(self) -> dict[str, Any]:
        rows = []
        for journey_id in self.aggregator.journey_ids():
            view = self.aggregator.journey_view(journey_id)
            assert view is not None
            rows.append(
                {
                    "journey_id": journey_id,
                    "name": self.names.get(journey_id, journey_id),
                    **{
                        k: view[k]
                        for k in (
                            "entries",
                            "active",
                            "completions",
                            "conversion_rate",
                            "abandonment_rate",
                            "actions_total",
                            "now",
                        )
                    },
                }
            )
        return {
            "generated_at": int(time.time() * 1000),
            "journeys": rows,
            "dead_letters": self.aggregator.dead_letter_view(),
            "stream": self.stream.status,
            "workers": self.workers.view(),
            "totals": self.aggregator.totals_view(),
        }

    def journey(self, journey_id: str) -> dict[str, Any] | None:
        view = self.aggregator.journey_view(journey_id)
        if view is None:
            return None
        return {
            **view,
            "name": self.names.get(journey_id, journey_id),
            "suppressed": self.workers.suppressed(journey_id),
            "generated_at": int(time.time() * 1000),
        }

    def overview(self) -> dict[str, Any]:
        doc = self.journeys()
        doc["detail"] = {j["journey_id"]: self.journey(j["journey_id"]) for j in doc["journeys"]}
        return doc


def serve(views: Views, host: str, port: int) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; returns the server (its port if ``port`` was 0)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "percorso-analytics"

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _refuse(self) -> None:
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        def _answer(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            if path in ("/", "/index.html"):
                self._static("index.html", send_body)
            elif path.startswith("/static/") and path[len("/static/") :] in STATIC:
                self._static(path[len("/static/") :], send_body)
            elif path == "/api/journeys":
                self._json(views.journeys(), send_body)
            elif path.startswith("/api/journeys/"):
                doc = views.journey(path[len("/api/journeys/") :])
                if doc is None:
                    self.send_error(HTTPStatus.NOT_FOUND, "no such journey")
                else:
                    self._json(doc, send_body)
            elif path == "/api/overview":
                self._json(views.overview(), send_body)
            elif path == "/healthz":
                self._send(b"ok\n", "text/plain; charset=utf-8", send_body)
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def _static(self, name: str, send_body: bool) -> None:
            body = resources.files("percorso.analytics").joinpath("static", name).read_bytes()
            self._send(body, STATIC[name], send_body)

        def _json(self, doc: Any, send_body: bool) -> None:
            body = json.dumps(doc, separators=(",", ":")).encode()
            self._send(body, "application/json", send_body)

        def _send(self, body: bytes, content_type: str, send_body: bool) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per poll of the page would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="analytics-http", daemon=True).start()
    return server
