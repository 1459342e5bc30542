"""A real HTTP server on localhost that serves a model catalogue and its files, good and bad, for
the catalogue tests (command line and the Slicer dialog)."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from helpers import REPO

from LesionFactorizerLib import catalog
from LesionFactorizerLib.core.checksums import sha256
from LesionFactorizerLib.modelfile import read_header

MODELS = REPO / "Resources" / "Models"
GOOD = MODELS / "demo-stroke.safetensors"
STALL_AFTER = 1 << 16


class ModelServer:
    """Serves ``files`` (path → bytes); ``/truncated/…`` announces the whole file but sends half,
    ``/stall/…`` sends its first bytes and then nothing until the server is closed."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.release = threading.Event()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                kind, _, name = self.path.lstrip("/").partition("/")
                body = server.files.get(name if kind in ("truncated", "stall") else self.path.lstrip("/"))
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "truncated":
                    self.wfile.write(body[: len(body) // 2])
                elif kind == "stall":
                    self.wfile.write(body[:STALL_AFTER])
                    self.wfile.flush()
                    server.release.wait(60)
                else:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def catalog_url(self) -> str:
        return self.url + "catalog.json"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def corrupted(data: bytes) -> bytes:
    """One byte of the weights changed: same size, other SHA-256."""
    offset = 8 + read_header(GOOD).header_size + 1000
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1:]


def serve_test_catalog() -> ModelServer:
    """A catalogue of variants of the bundled stroke demo, each entry exercising one outcome."""
    good = GOOD.read_bytes()
    bad = corrupted(good)
    bundled = json.loads((MODELS / catalog.CATALOG_NAME).read_text(encoding="utf-8"))
    base = next(m for m in bundled["models"] if m["name"] == GOOD.stem)
    assert base["sha256"] == sha256(good) and base["size"] == len(good)

    def variant(name, url, **changes):
        return {**copy.deepcopy(base), "name": name, "url": url, **changes}

    doc = {"format": catalog.FORMAT, "format_version": catalog.FORMAT_VERSION, "version": "test-1", "models": [
        variant("stroke-good", "models/stroke.safetensors"),
        variant("stroke-corrupted", "models/corrupted.safetensors"),      # catalogue: the good file's checksum
        # the checksum of what is served: the file itself then fails its weights checksum
        variant("stroke-damaged-weights", "models/corrupted.safetensors", sha256=sha256(bad)),
        variant("stroke-truncated", "truncated/stroke.safetensors"),
        variant("stroke-stalls", "stall/stroke.safetensors"),
        variant("stroke-missing", "models/missing.safetensors"),
        variant("stroke-as-tumor", "models/stroke.safetensors", task="tumor", inputs=["flair", "t1", "t1ce", "t2"]),
        variant("stroke-huge", "models/stroke.safetensors", size=10**18),
        variant("stroke-smaller", "models/stroke.safetensors", size=len(good) - 1),
    ]}
    return ModelServer({"catalog.json": json.dumps(doc).encode(), "models/stroke.safetensors": good,
                        "models/corrupted.safetensors": bad, "stroke.safetensors": good})
