"""Download a file into the cache with a progress bar, verified by its digest before use."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import PrunelabError
from .fileio import atomic_path, file_digest


def download(url: str, dest: Path, digest: str | None = None, algo: str = "md5") -> Path:
    """Fetch `url` to `dest` (atomically); reuse a cached copy whose digest matches.

    A digest mismatch is an error and leaves nothing in the cache.
    """
    dest = Path(dest)
    if dest.exists():
        if digest is None or file_digest(dest, algo) == digest:
            return dest
        dest.unlink()  # a stale or corrupt cached copy: fetch again
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=f"download {dest.name}"
                ) as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            if digest is not None:
                got = file_digest(tmp, algo)
                if got != digest:
                    raise PrunelabError(
                        f"{url}: {algo} mismatch (expected {digest}, got {got}); nothing was kept"
                    )
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PrunelabError(
            f"could not download {url}: {e}; place the file in {dest.parent}"
        ) from e
    return dest
