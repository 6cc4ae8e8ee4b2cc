"""Loopback HTTP servers for download tests; they listen on 127.0.0.1 only.

    with serve(folder) as base:                # files of `folder` at f"{base}/{name}"; absent ones answer 404
        ...
    with serve(folder, truncate=100) as base:  # advertises each file's full Content-Length, sends 100 bytes, hangs up
        ...
    with refusing() as base:                   # a port where nothing listens: connections are refused
        ...

Bases have no trailing slash. While `serve` runs, loopback requests bypass any proxy set in the environment.
"""
import os
import socket
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class _Handler(SimpleHTTPRequestHandler):
    truncate = None

    def copyfile(self, source, outputfile):
        if self.truncate is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(self.truncate))
        self.close_connection = True

    def log_message(self, format, *args):
        pass  # keep pytest's output clean


@contextmanager
def serve(directory, truncate=None):
    """Serve the files of `directory`; yield the base URL. `truncate=n` cuts every body after n bytes."""
    handler = partial(type("Handler", (_Handler,), {"truncate": truncate}), directory=os.fspath(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    saved = os.environ.get("no_proxy")
    # urllib reads no_proxy at request time; lower case wins over NO_PROXY
    os.environ["no_proxy"] = "127.0.0.1,localhost"
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        if saved is None:
            os.environ.pop("no_proxy", None)
        else:
            os.environ["no_proxy"] = saved
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def refusing():
    """Yield the base URL of a loopback port that is bound, so no one else takes it, but never listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
