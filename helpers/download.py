"""Atomic downloads with a progress bar, from the official locations or from a mirror.

A file appears at its final path only once it is whole and verified. Every download of the project (checkpoints,
CIFAR-10/100, CIFAR-100-C, the authors' published grids) asks `source` where to fetch a file: the official URL, or
a mirror, for machines behind a firewall or a lab cache. A mirror is a base URL (http, https, file) or a local
folder that holds the files under their official names; it is set per call (`mirror=`, the notebooks' `mirror`
parameter) or for every call with the environment variable VITS_MIRROR, in the manner of TORCH_HOME or
HF_ENDPOINT. Official files are checked against their published MD5s and fingerprints; a mirror's copies cannot be
trusted to be byte-identical, so they are checked by structure.
"""
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from helpers.common import CHUNK, writing

MIRROR_VARIABLE = "VITS_MIRROR"


class DownloadError(RuntimeError):
    pass


def mirror_base(mirror=None):
    """The mirror in effect as a base URL ending in "/": `mirror`, else $VITS_MIRROR, else None (official)."""
    mirror = mirror or os.environ.get(MIRROR_VARIABLE) or None
    if mirror is None:
        return None
    if "://" not in str(mirror):  # a local folder
        folder = Path(mirror).expanduser().resolve()
        if not folder.is_dir():
            raise DownloadError(f"The mirror {mirror} is neither a URL nor a folder ({MIRROR_VARIABLE} or `mirror`).")
        return folder.as_uri() + "/"
    return str(mirror).rstrip("/") + "/"


def source(official_url, mirror=None):
    """(URL to fetch, whether it is the official one): the file of `official_url`, by its name, on the mirror in
    effect (see `mirror_base`), or `official_url` itself."""
    base = mirror_base(mirror)
    if base is None:
        return official_url, True
    return base + Path(urlparse(official_url).path).name, False


def download(url, path, verify=None, hint=""):
    """Fetch `url` into `path`, via a temporary file in the same folder that is renamed when complete.

    `verify(tmp_path)` may raise to reject the file before it lands; the temporary file is removed on any
    failure, so an interrupted or rejected download leaves nothing at `path`. `hint` ends error messages
    (e.g. how to place the file by hand).
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    expected = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=expected, unit="B", unit_scale=True, desc=path.name, leave=False) as bar:
                        while chunk := response.read(CHUNK):
                            with writing(path):
                                out.write(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
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
