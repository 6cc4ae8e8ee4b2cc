"""Atomic downloads with a progress bar: a file appears at its final path only once it is whole and verified."""
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def download(url, path, verify=None, hint=""):
    """Fetch `url` into `path`, via a temporary file in the same folder that is renamed when complete.

    `verify(tmp_path)` may raise to reject the file before it lands; the temporary file is removed on any
    failure, so an interrupted or rejected download leaves nothing at `path`. `hint` ends error messages
    (e.g. how to place the file by hand).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    expected = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=expected, unit="B", unit_scale=True, desc=path.name, leave=False) as bar:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:  # 404, refused, cut off
                raise DownloadError(f"Could not download {url} to {path}: {error}. {hint}".strip()) from error
            received = out.tell()
        if expected is not None and received != expected:
            raise DownloadError(f"The download of {url} was interrupted after {received} of {expected} bytes; "
                                f"nothing was saved at {path}. Run again to retry. {hint}".strip())
        if verify is not None:
            verify(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
