"""The voice expert at run time: an utterance's audio in, MELD-ordered probabilities and a
status out (:class:`VoiceExpert`, :class:`VoiceReading`).

How it reads a voice (``models/voice``'s manifest says which encoder and thresholds):

1. The gate on the signal (:class:`VoiceGate`): the audio is trimmed to its speech (20 ms
   frames within ``trim_db`` of the loudest, plus ``pad_seconds`` each side, zero-padded at
   the end to ``min_window_seconds``, its speech brought to ``level_dbfs``:
   :func:`voice_segment`); less speech
   than ``min_speech_seconds`` is ``too_short``, speech quieter than ``min_dbfs`` (RMS over
   the speech) ``too_quiet``: nothing is read. More than ``max_clipped`` of the samples at
   full scale is ``clipped`` (read, but not trusted).
2. Whisper's encoder (CTranslate2, the model and compute type the manifest names; the same
   files the embedded recognizer runs) on the trimmed speech; its states pooled into their
   mean and standard deviation over time (:func:`pooled`).
3. The network (:class:`erc_ros.models.voice_net.VoiceNet`, as ONNX Runtime INT8 or FP32 when
   :func:`prepare` made them, else PyTorch): logits, divided by the calibration temperature
   (fitted on held-out speakers), and the voice's distance to the voices it learned from.
   A distance past ``max_distance`` is ``unfamiliar``; a distribution whose normalised
   entropy is past ``max_entropy`` is ``undecided``.
4. An utterance ``unfamiliar`` or ``undecided`` as a whole, with more speech than a window
   and a hop, is read again in windows (:func:`window_starts`, ``window_seconds``): when
   at least ``window_min_share`` of them pass the gate, clearly (``window_familiar_share``),
   their mean is the reading. Another
   speaker's voice in the utterance (two turns heard as one, the last words of the previous
   speaker under its start) makes the whole unlike any voice the network learned from,
   while most of its windows hold one voice.

Loading never builds: :func:`prepare` exports the network to ONNX (checked against
PyTorch) and its INT8 variant (checked against FP32) into the cache
(``<cache>/voice-expert-<model id>-<sha256 of the weights [:12]>/``), never into the model
directory.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from erc_ros.core.asr.files import AsrModelError, resolve_model
from erc_ros.core.asr.whisper import stable_features
from erc_ros.core.types import FACE_CLASSES, SAMPLE_RATE, VOICE_OK, VOICE_UNCERTAIN
from erc_ros.models.artefact import WEIGHTS_FILE, read_manifest, verify_model_dir
from erc_ros.paths import CHECKOUT, sha256_file, share_path
from erc_ros.runtime.backends import OrtBackend
from erc_ros.runtime.export import OPSET, StageSpec, export_and_check
from erc_ros.runtime.quantize import quantize_dynamic_int8

from .manifest import ArtefactError, cache_path

log = logging.getLogger("erc_ros.runtime")

MODEL_KIND = "voice_expression"
FP32_FILE, INT8_FILE, META_FILE = "voice_expert.fp32.onnx", "voice_expert.int8.onnx", \
    "voice_expert.json"
INPUT_NAME, OUTPUT_NAMES = "pooled", ("logits", "distance")
#: The export check: FP32 ONNX vs PyTorch (relative to the output's scale).
EXPORT_ATOL = 1e-4
#: INT8 is kept when its labels agree with FP32's on every check input FP32 does not call a
#: tie (its two most likely classes :data:`INT8_TIE_MARGIN` or more apart in probability)
#: and its distances within this fraction of the larger of the distance and the gate's
#: ``max_distance``: the scale the gate decides on (a distance of 2.4 read as 2.2, far inside
#: a gate at 73, is no disagreement).
INT8_DISTANCE_RTOL = 0.05
#: A tie: INT8 moves probabilities by ~0.006 on the check inputs; a test model's INT8 was
#: refused for one input whose top two FP32 probabilities were 0.00014 apart.
INT8_TIE_MARGIN = 0.02
#: How the INT8 file is made; a cache made another way is made again. 7-bit weights: with 8,
#: CPUs without VNNI saturate (distances 5.3 % off FP32 on an AMD Zen 3, INT8 refused).
INT8_METHOD = "ONNX Runtime dynamic INT8 on MatMul, per-channel, 7-bit weights"
#: The 20 ms frame of the signal gate.
_FRAME = SAMPLE_RATE // 50
#: Whisper's encoder window (mel frames, 10 ms each): longer speech is encoded in pieces.
_WINDOW_FRAMES = 3000


class VoiceExpertError(RuntimeError):
    """The voice expert cannot run: its model, Whisper's files or its ONNX are missing or
    damaged (the message says what to run)."""


@dataclass(frozen=True)
class VoiceGate:
    """When the expert says ``uncertain`` instead of a label (the manifest's ``gate``)."""
    trim_db: float = 35.0
    pad_seconds: float = 0.25
    min_window_seconds: float = 2.5
    min_speech_seconds: float = 0.4
    min_dbfs: float = -70.0
    max_clipped: float = 0.01
    max_entropy: float = 1.0
    max_distance: float = math.inf
    #: The level the encoder hears every utterance at: its speech (first to last voiced
    #: frame) brought to this RMS, in dBFS, the median of the training voices' clean clips
    #: (:func:`speech_level`). How loud a voice reaches the microphone depends on the
    #: distance and the gain, not on the emotion: Whisper's features move with the level,
    #: and RAVDESS read 12 dB louder loses 5-6 points of unweighted recall. NaN: as recorded
    #: (models trained before the field).
    level_dbfs: float = math.nan
    #: An utterance read as a whole as ``unfamiliar`` or ``undecided`` is read again in
    #: windows of this much speech (0: never), when it holds at least a window and a hop
    #: of it (:func:`window_starts`): two voices in one utterance, or another speaker's
    #: words under its start, make the whole unlike any voice learned from.
    window_seconds: float = 1.5
    window_hop_seconds: float = 0.5
    max_windows: float = 4
    #: ... and it gets the mean of the windows that read well, when they are at least this
    #: share of the windows (a voice unlike every learned one, a synthetic one, seldom
    #: passes in half of them).
    window_min_share: float = 0.5
    #: ... and only for a whole no farther than this many times ``max_distance`` (a voice
    #: much farther than that is unlike them all, not two voices: a synthetic one).
    window_max_distance_ratio: float = 2.5
    #: ... and when the windows that pass are clearly familiar: their mean distance within
    #: this share of ``max_distance`` (a synthetic voice's passing windows sit at its edge).
    window_familiar_share: float = 0.85

    #: The fields that change what the encoder hears (:func:`voice_segment`).
    SEGMENT_FIELDS = ("trim_db", "pad_seconds", "min_window_seconds", "min_speech_seconds",
                      "level_dbfs")

    @classmethod
    def from_dict(cls, d: dict) -> VoiceGate:
        """The manifest's ``gate``; ValueError for a value that is not a number, or a
        ``level_dbfs`` that is not a level (NaN, or -100 to 0 dBFS)."""
        out = {}
        for k, v in d.items():
            if k in cls.__dataclass_fields__:
                try:
                    out[k] = float(v)
                except (TypeError, ValueError):
                    raise ValueError(f"gate.{k} {v!r} is not a number") from None
        level = out.get("level_dbfs", math.nan)
        if not (math.isnan(level) or -100.0 <= level <= 0.0):
            raise ValueError(f"gate.level_dbfs {level:g} is not a speech level (-100 to 0 dBFS)")
        return cls(**out)


@dataclass
class VoiceReading:
    """What the expert made of one piece of audio."""
    status: str                          # VOICE_OK or VOICE_UNCERTAIN
    reason: str = ""                     # "" when ok, else one of VOICE_UNCERTAIN_REASONS
    detail: str = ""                     # why, for a person
    probabilities: Optional[np.ndarray] = None  # (7,) FACE_CLASSES order; None: not read
    distance: float = math.nan           # to the voices it learned from
    speech_seconds: float = 0.0
    seconds: dict = field(default_factory=dict)  # time spent: encoder, network
    windows: tuple[int, int] = (0, 0)    # read in windows: (kept, read); (0, 0): as a whole

    @property
    def label(self) -> str:
        return "" if self.probabilities is None else FACE_CLASSES[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return math.nan if self.probabilities is None else float(np.max(self.probabilities))


def default_model_dir() -> Path:
    """The shipped voice model: ``models/voice`` of the checkout, else of a colcon install."""
    return share_path("models", "voice") or CHECKOUT / "models" / "voice"


def voiced_span(x: np.ndarray, gate: VoiceGate) -> Optional[tuple[int, int]]:
    """First and last+1 sample of the voiced frames of ``x`` (None for silence)."""
    k = x.size // _FRAME
    if k == 0:
        return None
    energy = 10 * np.log10(np.square(x[:k * _FRAME].reshape(k, _FRAME)).mean(1) + 1e-12)
    voiced = np.flatnonzero(energy > energy.max() - gate.trim_db)
    if energy.max() <= -110 or not voiced.size:
        return None
    return int(voiced[0] * _FRAME), int((voiced[-1] + 1) * _FRAME)


def speech_level(x: np.ndarray, gate: VoiceGate,
                 span: Optional[tuple[int, int]] = None) -> float:
    """The RMS of ``x``'s speech, from its first to its last voiced frame (``span`` when the
    caller has :func:`voiced_span`'s already), in dBFS (``-inf`` for silence)."""
    v = voiced_span(x, gate) if span is None else span
    if v is None:
        return -math.inf
    ms = float(np.mean(np.square(x[v[0]:v[1]], dtype=np.float64)))
    return 10 * math.log10(ms) if ms > 0 else -math.inf


def speech_span(x: np.ndarray, gate: VoiceGate,
                span: Optional[tuple[int, int]] = None) -> tuple[int, int, float]:
    """(start, end) samples of the speech in ``x`` with the gate's padding, and the seconds
    between its first and last voiced frame (0 for silence); ``span``: :func:`voiced_span`'s,
    when the caller has it already."""
    v = voiced_span(x, gate) if span is None else span
    if v is None:
        return 0, x.size, 0.0
    pad = int(gate.pad_seconds * SAMPLE_RATE)
    a, b = v
    return max(0, a - pad), min(x.size, b + pad), (b - a) / SAMPLE_RATE


def voice_segment(x: np.ndarray, gate: VoiceGate) -> Optional[np.ndarray]:
    """What the encoder hears of ``x``: its speech with the gate's padding on both sides
    (silence where ``x`` is cut closer to the speech than that: the encoder learned from
    whole clips, and on RAVDESS clips cut at their speech the padding keeps their distance to
    the voices it learned from as on the whole clips, median 307 against 306, instead of
    451), zero-padded at the end to ``min_window_seconds``, and brought to the gate's
    ``level_dbfs`` when it has one (float samples: nothing clips); None when it holds less speech
    than the gate reads."""
    v = voiced_span(x, gate)
    a, b, speech = speech_span(x, gate, v)
    if v is None or speech < gate.min_speech_seconds:
        return None
    first, last = v
    pad = int(gate.pad_seconds * SAMPLE_RATE)
    seg = np.pad(x[a:b], (max(0, pad - first), max(0, last + pad - x.size)))
    if math.isfinite(gate.level_dbfs):
        seg = seg * np.float32(10 ** ((gate.level_dbfs - speech_level(x, gate, v)) / 20))
    n = int(gate.min_window_seconds * SAMPLE_RATE)
    return np.pad(seg, (0, n - seg.size)) if seg.size < n else seg


def window_starts(first: int, last: int, gate: VoiceGate) -> list[int]:
    """Where the windows of the voiced span ``[first, last)`` (samples) start: the first at
    its start, the last ending at its end, evenly spaced at most ``window_hop_seconds``
    apart, or ``max_windows`` of them spread evenly; empty when the span is shorter than a
    window and a hop (or windows are off)."""
    n = int(gate.window_seconds * SAMPLE_RATE)
    hop = int(gate.window_hop_seconds * SAMPLE_RATE)
    if n <= 0 or hop <= 0 or gate.max_windows < 2 or last - first < n + hop:
        return []
    k = min(int(gate.max_windows), 1 + math.ceil((last - first - n) / hop))
    return np.linspace(first, last - n, k).round().astype(int).tolist()


def pooled(states: np.ndarray) -> np.ndarray:
    """Encoder states (frames, d) -> their mean and standard deviation over time, (2d,)."""
    s = np.asarray(states, np.float32)
    return np.concatenate([s.mean(0), s.std(0)]).astype(np.float32)


class WhisperStates:
    """Whisper's encoder on 16 kHz audio: ``states(x) -> (frames, d_model)`` float32, one
    frame per 20 ms. ``model``: ``base``, ``tiny.en`` or a CTranslate2 directory (never a
    hub name)."""

    def __init__(self, model: str = "base", compute_type: str = "int8", threads: int = 1):
        try:
            from faster_whisper import WhisperModel
            self.path = resolve_model(model)
            self.whisper = stable_features(WhisperModel(
                str(self.path), device="cpu", compute_type=compute_type,
                cpu_threads=int(threads), num_workers=1, local_files_only=True))
        except (ImportError, AsrModelError, RuntimeError, ValueError, OSError) as e:
            raise VoiceExpertError(f"the voice expert's encoder (Whisper {model}) cannot "
                                   f"load: {e}") from e
        self.model, self.compute_type, self.threads = model, compute_type, int(threads)

    def states(self, x: np.ndarray) -> np.ndarray:
        import ctranslate2

        feats = self.whisper.feature_extractor(np.ascontiguousarray(x, np.float32))
        out = []
        for lo in range(0, max(1, feats.shape[-1] - 1), _WINDOW_FRAMES):
            piece = feats[:, lo:lo + _WINDOW_FRAMES]
            n = piece.shape[-1] - piece.shape[-1] % 2
            if n < 2:
                break
            sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(piece[None, :, :n]))
            out.append(np.asarray(self.whisper.model.encode(sv, to_cpu=True))[0])
        return np.concatenate(out).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def normalized_entropy(p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum() / math.log(p.size))


# ------------------------------------------------------------------ prepare (ONNX, INT8)

def cache_dir(model_dir: str | Path) -> Path:
    """Where the ONNX files of ``model_dir`` go: keyed by its model id and its weights'
    sha256, so a retrained model never meets a stale export."""
    m = read_manifest(model_dir)
    sha = m["artefacts"][WEIGHTS_FILE]["sha256"]
    return cache_path(f"voice-expert-{m['model_id']}-{sha[:12]}")


def find_prepared(model_dir: str | Path) -> dict[str, Path]:
    """``{"fp32": path, "int8": path}`` of what :func:`prepare` made for ``model_dir``
    (INT8 only where it passed its check); empty when not prepared. A file that no longer
    matches its recorded sha256 raises :class:`ArtefactError`."""
    d = cache_dir(model_dir)
    if not (d / META_FILE).is_file():
        return {}
    try:
        meta = json.loads((d / META_FILE).read_text())
        files = {p: (d / e["file"], e["sha256"]) for p, e in meta["onnx"].items()}
        if meta["int8_check"].get("method") != INT8_METHOD:
            return {}  # INT8 made (or tried) another way: prepare makes it all again
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtefactError(f"{d / META_FILE}: unreadable record ({e}); delete {d} and "
                            "prepare again", "malformed") from e
    for p, (path, sha) in files.items():
        if not path.is_file() or sha256_file(path) != sha:
            raise ArtefactError(f"{path}: missing or modified since it was prepared; delete "
                                f"{d} and prepare again", "sha256")
    return {p: path for p, (path, _) in files.items()}


def prepare(model_dir: str | Path | None = None) -> Path:
    """Export the voice network to ONNX FP32 and INT8 into the cache, once; returns the
    folder. FP32 is checked against PyTorch on the model's own check inputs (pooled states
    of held-out speech stored with it); INT8 is kept only where it agrees with FP32 (labels
    equal wherever FP32 is not tied, :data:`INT8_TIE_MARGIN`; distances within
    :data:`INT8_DISTANCE_RTOL` of the gate's scale)."""
    import onnx
    import onnxruntime
    import torch

    from erc_ros.models.voice_net import load_voice_model

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    if find_prepared(model_dir):
        return cache_dir(model_dir)
    shutil.rmtree(cache_dir(model_dir), ignore_errors=True)  # INT8 made another way
    t0 = time.perf_counter()
    net, manifest = load_voice_model(model_dir)
    x = check_inputs(model_dir)
    d = cache_dir(model_dir)
    spec = StageSpec("voice_expert", net, [INPUT_NAME], list(OUTPUT_NAMES),
                     {INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUT_NAMES}},
                     [{INPUT_NAME: x[:1]}, {INPUT_NAME: x}], labels_output="logits")
    tmp = d.with_name(f"{d.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        check = export_and_check(spec, tmp / FP32_FILE, exporter="torchscript", atol=EXPORT_ATOL)
        onnx_files = {"fp32": {"file": FP32_FILE, "sha256": sha256_file(tmp / FP32_FILE)}}
        quantize_dynamic_int8(tmp / FP32_FILE, tmp / INT8_FILE, matmul_only=True,
                              reduce_range=True)
        a = OrtBackend(tmp / FP32_FILE, threads=1).run({INPUT_NAME: x})
        b = OrtBackend(tmp / INT8_FILE, threads=1).run({INPUT_NAME: x})
        same = a["logits"].argmax(1) == b["logits"].argmax(1)
        top2 = np.sort(_softmax(a["logits"]), axis=1)[:, -2:]
        tied = top2[:, 1] - top2[:, 0] < INT8_TIE_MARGIN
        gate = VoiceGate.from_dict(manifest.get("gate", {}))
        scale = np.maximum(a["distance"], gate.max_distance)
        rel = float(np.max(np.abs(a["distance"] - b["distance"]) / scale))
        int8 = {"method": INT8_METHOD, "label_agreement": float(np.mean(same)),
                "label_agreement_untied": float(np.mean(same[~tied])) if (~tied).any() else 1.0,
                "ties": int(tied.sum()), "max_distance_diff_to_gate": round(rel, 5),
                "passed": bool(same[~tied].all()) and rel <= INT8_DISTANCE_RTOL}
        if int8["passed"]:
            onnx_files["int8"] = {"file": INT8_FILE, "sha256": sha256_file(tmp / INT8_FILE)}
        else:
            (tmp / INT8_FILE).unlink()
            log.warning("voice expert: INT8 disagrees with FP32 (%s); FP32 only", int8)
        meta = {"kind": "voice_expert", "model_id": manifest["model_id"],
                "weights_sha256": manifest["artefacts"][WEIGHTS_FILE]["sha256"],
                "onnx": onnx_files, "opset": OPSET, "inputs": [
                    {"name": INPUT_NAME, "dtype": "float32",
                     "shape": ["batch", net.config.input_dim]}],
                "outputs": list(OUTPUT_NAMES), "check": check.as_dict(), "int8_check": int8,
                "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                             "onnxruntime": onnxruntime.__version__},
                "seconds": round(time.perf_counter() - t0, 2)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        try:
            tmp.rename(d)
        except OSError:  # another process prepared it meanwhile: keep theirs
            if not find_prepared(model_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("voice expert: prepared %s in %.1f s", d, time.perf_counter() - t0)
    return d


CHECK_FILE = "check_inputs.npy"


def check_inputs(model_dir: str | Path) -> np.ndarray:
    """The pooled encoder states of held-out speech the model directory carries (its
    ``check`` artefact), on which exports are checked."""
    m = verify_model_dir(model_dir)
    rel = [r for r, e in m["artefacts"].items() if e.get("kind") == "check"]
    if not rel:
        raise ArtefactError(f"{model_dir}: no check inputs listed", "malformed")
    return np.load(Path(model_dir) / rel[0], allow_pickle=False).astype(np.float32)


# ------------------------------------------------------------------ the expert

class VoiceExpert:
    """``predict(audio16k) -> VoiceReading``. ``model_dir``: a voice model directory
    (default: the shipped ``models/voice``). ``backend``: ``auto`` (ONNX Runtime INT8, else
    FP32, when prepared; else PyTorch), ``onnxruntime`` (refused when not prepared) or
    ``torch``. ``precision``: ``int8`` or ``fp32`` for ONNX Runtime. ``threads``: the
    encoder's and ONNX Runtime's."""

    labels = FACE_CLASSES

    def __init__(self, model_dir: str | Path | None = None, threads: int = 1,
                 backend: str = "auto", precision: str = "int8"):
        if backend not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"backend {backend!r}: one of auto, onnxruntime, torch")
        if precision not in ("int8", "fp32"):
            raise ValueError(f"precision {precision!r}: int8 or fp32")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        try:
            m = verify_model_dir(self.model_dir)
        except (ArtefactError, OSError, ValueError) as e:
            raise VoiceExpertError(f"voice model {self.model_dir}: {e}") from e
        if m.get("kind") != MODEL_KIND:
            raise VoiceExpertError(f"{self.model_dir} is not a voice model (kind "
                                   f"{m.get('kind')!r})")
        if tuple(m["label_names"]) != FACE_CLASSES:
            raise VoiceExpertError(f"{self.model_dir}: classes {m['label_names']} are not "
                                   f"{FACE_CLASSES}")
        self.manifest, self.model_id = m, m["model_id"]
        try:
            self.gate = VoiceGate.from_dict(m.get("gate", {}))
        except ValueError as e:
            raise VoiceExpertError(f"voice model {self.model_dir}: {e}") from None
        self.temperature = float(m.get("calibration", {}).get("temperature", 1.0))
        enc = m["input"]["encoder"]
        self.encoder = WhisperStates(enc["model"], enc.get("compute_type", "int8"), threads)
        self._ort = self._net = None
        found = {} if backend == "torch" else find_prepared(self.model_dir)
        if backend == "onnxruntime" and not found:
            raise VoiceExpertError(f"the voice expert's ONNX files are not prepared in "
                                   f"{cache_dir(self.model_dir)}: run `python -m erc_ros "
                                   "predict-voice --prepare` once")
        if found:
            precision = precision if precision in found else "fp32"
            self._ort = OrtBackend(found[precision], providers=["CPUExecutionProvider"],
                                   threads=threads)
            self.backend, self.precision, self.path = "onnxruntime", precision, found[precision]
        else:
            from erc_ros.models.voice_net import load_voice_model

            self._net, _ = load_voice_model(self.model_dir)
            self.backend, self.precision, self.path = "torch", "fp32", self.model_dir

    def describe(self) -> str:
        return (f"voice expert {self.model_id} (Whisper {self.encoder.model} encoder, "
                f"{self.encoder.compute_type}): {self.backend} {self.precision}, {self.path}")

    def network(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (n, 7), distance (n,)) of pooled states (n, input_dim)."""
        x = np.ascontiguousarray(features, np.float32)
        if self._ort is not None:
            out = self._ort.run({INPUT_NAME: x})
            return out["logits"], out["distance"]
        import torch

        with torch.inference_mode():
            logits, dist = self._net(torch.from_numpy(x))
        return logits.numpy(), dist.numpy()

    def predict(self, audio16k: np.ndarray) -> VoiceReading:
        """The reading of one utterance's audio (1-D float samples at 16 kHz). Raises
        ValueError for audio that is not 1-D finite numbers."""
        x = np.asarray(audio16k)
        if x.ndim != 1 or x.dtype.kind not in "fiu":
            raise ValueError(f"audio must be 1-D numeric samples, got {x.dtype} {x.shape}")
        x = x.astype(np.float32)
        if x.size and not np.isfinite(x).all():
            raise ValueError("audio holds NaN or infinite samples")
        g = self.gate
        a, b, speech = speech_span(x, g)
        if speech < g.min_speech_seconds:
            return VoiceReading(VOICE_UNCERTAIN, "too_short", f"too short: {speech:.2f} s of "
                                f"speech < {g.min_speech_seconds:g}", speech_seconds=speech)
        seg = x[a:b]
        rms = float(np.sqrt(np.mean(np.square(seg, dtype=np.float64))))
        dbfs = 20 * math.log10(max(rms, 1e-10))
        if dbfs < g.min_dbfs:
            return VoiceReading(VOICE_UNCERTAIN, "too_quiet", f"too quiet: {dbfs:.1f} dBFS < "
                                f"{g.min_dbfs:g}", speech_seconds=speech)
        r = self._read(voice_segment(x, g), speech)
        clipped = float(np.mean(np.abs(seg) >= 0.999))
        if clipped > g.max_clipped:
            r.status, r.reason = VOICE_UNCERTAIN, "clipped"
            r.detail = f"clipped: {100 * clipped:.1f} % of samples at full scale > {100 * g.max_clipped:g} %"
            return r
        self._judge(r)
        if r.reason in ("unfamiliar", "undecided"):
            return self._read_windows(x, r) or r
        return r

    def _read(self, segment: np.ndarray, speech: float) -> VoiceReading:
        """The network's reading of what the encoder hears (``voice_segment``), not judged."""
        t0 = time.perf_counter()
        states = self.encoder.states(segment)
        t1 = time.perf_counter()
        logits, dist = self.network(pooled(states)[None])
        t2 = time.perf_counter()
        p = _softmax(logits[0].astype(np.float64) / self.temperature).astype(np.float32)
        return VoiceReading(VOICE_OK, probabilities=p, distance=float(dist[0]),
                            speech_seconds=speech,
                            seconds={"encoder": t1 - t0, "network": t2 - t1})

    def _judge(self, r: VoiceReading) -> VoiceReading:
        """The gate on a reading: ``unfamiliar`` past ``max_distance``, else ``undecided``
        past ``max_entropy``."""
        g = self.gate
        h = normalized_entropy(r.probabilities)
        if r.distance > g.max_distance:
            r.status, r.reason = VOICE_UNCERTAIN, "unfamiliar"
            r.detail = (f"unfamiliar voice: distance {r.distance:.0f} > {g.max_distance:.0f} "
                        "to the voices it learned from")
        elif h > g.max_entropy:
            r.status, r.reason = VOICE_UNCERTAIN, "undecided"
            r.detail = f"undecided: entropy {h:.2f} > {g.max_entropy:.2f}"
        return r

    def _read_windows(self, x: np.ndarray, whole: VoiceReading) -> Optional[VoiceReading]:
        """``x`` read in windows of its speech (:func:`window_starts`; each as a whole
        utterance is read, with the gate's padding) when the whole is no farther than
        ``window_max_distance_ratio`` times ``max_distance``: the mean of the windows that
        pass the gate when they are at least ``window_min_share`` of them and their mean
        distance is within ``window_familiar_share`` of ``max_distance``; None when
        there are no windows or too few pass (it stops reading as soon as they cannot)."""
        g = self.gate
        if whole.distance > g.window_max_distance_ratio * g.max_distance:
            return None
        span = voiced_span(x, g)
        starts = window_starts(*span, g) if span else []
        if not starts:
            return None
        n, pad = int(g.window_seconds * SAMPLE_RATE), int(g.pad_seconds * SAMPLE_RATE)
        need = max(1, math.ceil(g.window_min_share * len(starts)))
        kept: list[VoiceReading] = []
        seconds = dict(whole.seconds)
        for i, s0 in enumerate(starts):
            if len(kept) + len(starts) - i < need:
                return None
            piece = x[max(0, s0 - pad):s0 + n + pad]
            seg = voice_segment(piece, g)
            if seg is None:
                continue
            w = self._judge(self._read(seg, speech_span(piece, g)[2]))
            for k, v in w.seconds.items():
                seconds[k] = seconds.get(k, 0.0) + v
            if w.status == VOICE_OK:
                kept.append(w)
        if len(kept) < need or np.mean([w.distance for w in kept]) > \
                g.window_familiar_share * g.max_distance:
            return None
        p = np.mean([w.probabilities for w in kept], 0).astype(np.float32)
        r = VoiceReading(VOICE_OK, probabilities=p / p.sum(),
                         distance=float(np.mean([w.distance for w in kept])),
                         speech_seconds=whole.speech_seconds, seconds=seconds,
                         windows=(len(kept), len(starts)),
                         detail=f"read in windows: {len(kept)} of {len(starts)} pass "
                                f"({whole.reason} as a whole)")
        return r
