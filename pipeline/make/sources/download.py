"""download:cifar10 / download:cifar100: the official archives, fetched once into a cache folder."""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.make.sources.base import SourceError

log = logging.getLogger(__name__)

DOWNLOADS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}

def download(dataset: str, cache_dir: str | Path) -> Path:
    """Fetches the official archive of ``dataset`` (cifar10 | cifar100) into cache_dir once."""
    import hashlib

    if dataset not in DOWNLOADS:
        raise SourceError(f"cannot download {dataset!r}; known: {sorted(DOWNLOADS)}")
    url, md5 = DOWNLOADS[dataset]
    target = Path(cache_dir) / url.rsplit("/", 1)[-1]

    def md5_ok(p: Path) -> bool:
        h = hashlib.md5()
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest() == md5

    if target.is_file() and md5_ok(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    log.info("downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise SourceError(f"no network ({err}): download {url} by hand and pass --source <file>") from err
    if not md5_ok(partial):
        partial.unlink(missing_ok=True)
        raise SourceError(f"{url}: downloaded file has the wrong md5 (expected {md5}); try again")
    partial.replace(target)
    return target


_DOWNLOAD_RE = re.compile(r"^download:(\w+)$")


def resolve_source(source: str, cache_dir: str | Path) -> Path:
    """``download:cifar10`` -> the cached official archive; anything else is a path."""
    m = _DOWNLOAD_RE.match(source)
    if m:
        return download(m.group(1), cache_dir)
    return Path(source)

