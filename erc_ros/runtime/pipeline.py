"""`EmotionPipeline`: THE inference path (nodes, eval-bag, demo and every benchmark).

``predict(utterance) -> Estimate`` keeps each conversation's context itself: the past
utterances as the text prompt reads them (speaker and text: no audio, no face crops; bounded
in count and in bytes, see :class:`~erc_ros.core.conversation.ConversationHistory`) and the
encoded vectors of each (for the fusion head), so a call encodes only the new utterance, then
runs the fusion head over the cached conversation window. Stages (preprocess,
text/audio/video encoders, fusion, postprocess) each run on a
:class:`~erc_ros.runtime.backends.Backend` chosen from the model directory's artefacts; the
audio and video encoders run concurrently with the text encoder when present.

    pipe = EmotionPipeline.from_model_dir("models/default", backend="auto")
    est = pipe.predict(utterance)      # erc_ros.core.types.Estimate
    pipe.reset(utterance.conversation_id)
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from erc_ros.core.conversation import DEFAULT_MAX_BYTES, ConversationHistory
from erc_ros.core.types import (FACE_CLASSES, FACE_DISABLED, FACE_SEEN, MODALITIES,
                                VOICE_DISABLED, VOICE_OK, VOICE_UNFAMILIAR, Estimate,
                                Utterance)

from .backends import (Backend, BackendUnavailable, OrtBackend, TorchBackend, choose_ort_providers,
                       cpu_int8, default_threads, onnxruntime_available, resolve_backend,
                       tensorrt_available)
from .engines import DEFAULT_BUCKETS, TensorRTBackend, current_device
from .manifest import (ArtefactError, find_stage_files, load_model, read_manifest,
                       runtime_artefacts, runtime_dir, verify_files)
from .prepare import missing
from .prepare import prepare as prepare_files
from .senses import FUSION_MODES, MODALITY, SenseFusion, SpeakerBaselines, readings_of
from .senses import default_model_dir as default_fusion_dir
from .stages import STAGES, needed_stages, stage_io

log = logging.getLogger("erc_ros.runtime")

TIMED = ("preprocess", "text_encoder", "audio_encoder", "video_encoder", "fusion",
         "postprocess", "total")


@dataclass
class _Encoded:
    """The cached encodings of one conversation's window, aligned with the utterances its
    :class:`ConversationHistory` holds (:meth:`keep` drops those it dropped)."""

    window: int
    vectors: deque = field(default_factory=deque)  # (text, audio, video, mask[3], speaker)
    speakers: dict = field(default_factory=dict)  # speaker name -> order of appearance
    baselines: SpeakerBaselines = field(default_factory=SpeakerBaselines)  # voice, face
    nbytes: int = 0  # bytes of the vectors' arrays

    def add(self, vec: tuple) -> None:
        self.vectors.append(vec)
        self.nbytes += sum(v.nbytes for v in vec[:4])
        self.keep(self.window)

    def keep(self, n: int) -> None:
        """Keep the newest ``n`` vectors."""
        while len(self.vectors) > n:
            self.nbytes -= sum(v.nbytes for v in self.vectors.popleft()[:4])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _torch_int8(module):
    """PyTorch dynamic INT8 of the nn.Linear layers (the torch side of the INT8 comparison)."""
    import torch

    return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


class EmotionPipeline:
    """Per-utterance emotion estimates over a conversation, on any backend.

    Build it with :meth:`from_model_dir` (or :meth:`from_model` for an in-memory model on
    the torch backend). Thread-safe: calls are serialised by a lock.
    """

    def __init__(self, model, stages: dict[str, Backend], *, model_id: str,
                 backend_name: str, precision: str, max_context: int = 64,
                 why: str = "", threads: int = 2, max_conversations: int = 16,
                 max_history_bytes: int = DEFAULT_MAX_BYTES):
        self.model = model
        self.preprocessor = model.preprocessor
        self.stages = stages
        self.model_id = model_id
        self.backend_name = backend_name
        self.precision = precision
        self.class_names = list(model.label_names)
        self.valence_arousal = np.asarray(model.valence_arousal, np.float32)
        self.dims = tuple(int(d) for d in model.dims)
        self.has_audio_encoder = "audio_encoder" in stages
        self.has_video_encoder = "video_encoder" in stages
        self.max_context = max(1, int(max_context))
        self.past_context = int(self.preprocessor.config.prompt.past_context)
        self.max_speakers = int(self.preprocessor.config.max_speakers)
        # Constant memory on a robot running for days, whatever it is sent: max_context
        # utterances per conversation, max_conversations in all (least recently used
        # dropped), max_history_bytes for the past utterances, of which the history keeps
        # only what the text prompt reads (no audio, no crops); the encodings follow it.
        self.max_conversations = max(1, int(max_conversations))
        self.history = ConversationHistory(self.max_context, self.max_conversations,
                                           max_history_bytes)
        self._encoded: dict[str, _Encoded] = {}
        self._encoded_bytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="erc-encoder") \
            if (self.has_audio_encoder or self.has_video_encoder) else None
        self._times = {k: deque(maxlen=512) for k in TIMED}
        self._count = 0
        self._errors = 0
        self.last_timings: dict[str, float] = {}
        self.why = why or "configured"
        self.fusion: Optional[SenseFusion] = None
        self.fusion_mode, self.fusion_why = "text", "the text model alone"
        self.where = ", ".join(f"{s}: {b.describe()}" for s, b in stages.items())
        log.info("erc_ros pipeline %s: %s (%s)", model_id, self.where, why or "configured")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model, backend: str = "torch", precision: str = "fp32",
                   threads: int | None = None, max_context: int = 64,
                   max_conversations: int = 16,
                   max_history_bytes: int = DEFAULT_MAX_BYTES) -> "EmotionPipeline":
        """Run an in-memory :class:`ErcModel` on the torch backend (fp32, or int8 dynamic)."""
        if backend != "torch":
            raise ValueError("from_model runs torch only; use from_model_dir for ONNX/TensorRT")
        threads = default_threads() if threads is None else threads
        model.eval()
        return cls(model, _torch_stages(model, precision, threads),
                   model_id=getattr(model.config, "model_id", "model"), backend_name="torch",
                   precision=precision, max_context=max_context, why="in-memory model",
                   threads=threads, max_conversations=max_conversations,
                   max_history_bytes=max_history_bytes)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, backend: str = "auto",
                       precision: str = "auto", threads: int | None = None,
                       max_context: int = 64, providers: Optional[list[str]] = None,
                       prepare: bool = False,
                       max_conversations: int = 16,
                       max_history_bytes: int = DEFAULT_MAX_BYTES, fusion: str = "senses",
                       fusion_model: str | Path = "") -> "EmotionPipeline":
        """Load a model directory (every listed file's sha256 verified) and pick backends.

        ``backend``: ``auto`` (tensorrt -> onnxruntime -> torch, the first that can run with
        the artefacts present), ``tensorrt``, ``onnxruntime`` or ``torch``. ``precision``:
        ``auto`` (int8 on a CPU with VNNI, fp32 on one without: see
        :func:`~erc_ros.runtime.backends.cpu_int8`; fp16 on GPU where the artefacts exist, else
        fp32), ``fp32``,
        ``int8``, ``woq8``, ``fp16``, ``qdq``.

        ``fusion``: ``senses`` (the published label weighs the text model with the experts
        its sense fusion names, :meth:`set_fusion`) or ``text`` (the text model alone).

        Loading never builds or writes: the ONNX files come from the model directory or its
        overlay in the cache, made beforehand by :func:`erc_ros.runtime.prepare.prepare`
        (set-up, ``python -m erc_ros prepare``). Without them ``auto`` runs torch and says
        why, and ``onnxruntime`` fails naming the command. ``prepare=True`` (the CLI, the
        node's opt-in parameter) makes the missing ones first, into the cache.
        """
        threads = default_threads() if threads is None else threads
        model_dir = Path(model_dir)
        model = load_model(model_dir)  # verifies every listed file (weights, ONNX, engines)
        model.eval()
        model_id = model.manifest.get("model_id", model.config.model_id)
        needed = needed_stages(model)
        variants = [] if precision in ("auto", "fp32") else [precision]
        # auto on a CPU machine: ONNX Runtime INT8 is 4x faster than torch FP32 for the same
        # labels where the CPU has VNNI (docs/results.md, Runtime); FP32 where it has not.
        ort_for_auto = (backend == "auto" and onnxruntime_available()
                        and not tensorrt_available())
        # INT8 where this CPU has VNNI, read once here for the choice below too
        cpu = cpu_int8() if precision == "auto" else (False, "")
        if ort_for_auto and cpu[0]:
            variants = ["int8"]
        not_prepared = ""
        if backend == "onnxruntime" or ort_for_auto:
            todo = missing(model_dir, model, variants)
            if todo and prepare:
                prepare_files(model_dir, variants, model=model)
            elif todo:
                not_prepared = (f"{', '.join(todo)} ONNX files of {model_dir} not prepared: "
                                f"run `python -m erc_ros prepare --model {model_dir}` (or "
                                f"the node parameter prepare:=true)")
                if backend == "onnxruntime" and "fp32" in todo:
                    raise RuntimeError(not_prepared)
                log.warning(not_prepared)
        rdir = runtime_dir(model_dir, needed, "fp32")
        if rdir is not None and rdir != model_dir:
            log.info("runtime artefacts of %s from %s", model_dir, rdir)
            load_model(rdir)  # the overlay's manifest: every listed file verified again
        model_dir = rdir or model_dir
        onnx_fp32 = find_stage_files(model_dir, "onnx", "fp32")
        engines = current_engines(model_dir) if tensorrt_available() else {}
        name, why = resolve_backend(backend, have_onnx=needed <= set(onnx_fp32),
                                    have_engine="text_encoder" in engines)
        if not_prepared:
            why = f"{why}; {not_prepared}"
        if name == "torch":
            prec = "fp32" if precision == "auto" else precision
            stages = _torch_stages(model, prec, threads)
        elif name == "onnxruntime":
            prec, stages, chosen = _ort_stages(model_dir, needed, precision, threads, providers,
                                               cpu)
            if chosen:
                why = f"{why}; precision auto: {chosen}"
        else:
            prec, stages = _trt_stages(model_dir, model, needed, engines, precision, threads)
        pipe = cls(model, stages, model_id=model_id, backend_name=name, precision=prec,
                   max_context=max_context, why=why, threads=threads,
                   max_conversations=max_conversations, max_history_bytes=max_history_bytes)
        pipe.set_fusion(fusion, fusion_model)
        return pipe

    def set_fusion(self, mode: str = "senses", model_dir: str | Path = "") -> str:
        """How the published label is made: ``senses`` weighs the text model's distribution
        with the experts' that the fusion of ``model_dir`` names (:mod:`erc_ros.runtime.senses`,
        default ``models/senses``: the voice), ``text`` publishes the text model's. A
        fusion fitted with another text model, or a model whose classes are not the experts'
        seven, keeps ``text`` and says why (returned, and ``fusion_why``)."""
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion {mode!r}: one of {', '.join(FUSION_MODES)}")
        self.fusion, self.fusion_mode, self.fusion_why = None, "text", "the text model alone"
        if mode == "text":
            return self.fusion_why
        d = Path(model_dir) if model_dir else default_fusion_dir()
        try:
            fusion = SenseFusion.load(d)
        except (ArtefactError, OSError, ValueError, KeyError) as e:
            self.fusion_why = f"text alone: no sense fusion in {d} ({e})"
        else:
            if self._face_order is None:
                self.fusion_why = (f"text alone: the model's classes are not the experts' "
                                   f"seven ({', '.join(self.class_names)})")
            elif fusion.text_model_id != self.model_id:
                self.fusion_why = (f"text alone: {d} was fitted with text model "
                                   f"{fusion.text_model_id!r}, this one is {self.model_id!r}")
            else:
                self.fusion, self.fusion_mode = fusion, "senses"
                self.fusion_why = f"senses: {fusion.model_id} ({d})"
        log.log(logging.INFO if self.fusion else logging.WARNING, "fusion: %s", self.fusion_why)
        return self.fusion_why

    # ------------------------------------------------------------------ inference
    def predict(self, utterance: Utterance) -> Estimate:
        """Estimate the emotion of ``utterance`` given its conversation so far, then add it to
        that conversation's context. An utterance that carries none of the modalities the
        model reads (no words for a text model) gets no label: ``label`` "", no
        probabilities, no modalities, NaN valence/arousal (the face and voice experts'
        readings are still there)."""
        with self._lock:
            try:
                return self._predict(utterance)
            except Exception:
                self._errors += 1
                raise

    def _predict(self, u: Utterance) -> Estimate:
        t0 = time.perf_counter()
        timings = {}
        cid = u.conversation_id
        past = self.history.context(cid)
        conv = self._encoded.get(cid)
        if conv is None or not past:  # new, or forgotten by the history (LRU)
            conv = self._encoded[cid] = _Encoded(self.max_context)
        pre = self.preprocessor
        context = past[-self.past_context:] if self.past_context > 0 else []
        text_in = pre.text_inputs(u, context)
        use_audio = self.has_audio_encoder and u.has_audio
        use_video = self.has_video_encoder and u.has_video
        t1 = time.perf_counter()
        timings["preprocess"] = (t1 - t0) * 1e3

        def timed(stage, make_inputs):
            s = time.perf_counter()
            inputs = make_inputs()
            out = self.stages[stage].run(inputs)
            return next(iter(out.values()))[0], (time.perf_counter() - s) * 1e3

        futures = {}
        if use_audio:
            futures["audio_encoder"] = self._submit(timed, "audio_encoder",
                                                    lambda: pre.audio_inputs(u))
        if use_video:
            futures["video_encoder"] = self._submit(timed, "video_encoder",
                                                    lambda: pre.video_inputs(u))
        text_vec, timings["text_encoder"] = timed("text_encoder", lambda: text_in)
        _, da, dv = self.dims
        audio_vec = np.zeros(da, np.float32)
        video_vec = np.zeros(dv, np.float32)
        if "audio_encoder" in futures:
            audio_vec, timings["audio_encoder"] = futures["audio_encoder"].result()
        if "video_encoder" in futures:
            video_vec, timings["video_encoder"] = futures["video_encoder"].result()
        mask = np.array([u.has_text, use_audio, use_video], bool)
        spk_name = u.speaker_id.strip() or pre.config.prompt.unknown_speaker
        spk = conv.speakers.setdefault(spk_name, len(conv.speakers)) % self.max_speakers
        conv.add((text_vec.astype(np.float32), audio_vec.astype(np.float32),
                  video_vec.astype(np.float32), mask, spk))
        self.history.add(u)
        self._follow_history()

        t2 = time.perf_counter()
        vecs = list(conv.vectors)
        feeds = {"text": np.stack([v[0] for v in vecs])[None],
                 "audio": np.stack([v[1] for v in vecs])[None],
                 "video": np.stack([v[2] for v in vecs])[None],
                 "modality_mask": np.stack([v[3] for v in vecs])[None],
                 "speaker_ids": np.asarray([v[4] for v in vecs], np.int64)[None],
                 "padding_mask": np.zeros((1, len(vecs)), bool)}
        out = self.stages["fusion"].run(feeds)
        t3 = time.perf_counter()
        timings["fusion"] = (t3 - t2) * 1e3

        logits = out["logits"][0, -1].astype(np.float64)
        probs = _softmax(logits)
        k = int(probs.argmax())
        valence, arousal = (probs @ self.valence_arousal).tolist()
        used = [m for m, on in zip(MODALITIES, mask) if on]
        if not used:
            # Nothing this model reads (a text model, an utterance without words): no label
            # from the conversation's prior alone. The utterance still joins the context.
            probs, valence, arousal = np.zeros(0), math.nan, math.nan
        text_probs = probs
        weights = out.get("modality_weights")
        if weights is not None and used:
            w = np.asarray(weights[0, -1], np.float64)[mask]
            w = w / w.sum() if w.sum() > 0 else np.full(len(used), 1.0 / len(used))
        else:
            w = np.full(len(used), 1.0 / max(len(used), 1))
        face, voice = self._face_fields(u), self._voice_fields(u)
        if self.fusion is not None:
            probs, used, w = self._fuse(conv.baselines, spk_name, text_probs, face, voice)
            if used:
                k = int(probs.argmax())
                valence, arousal = (probs @ self.valence_arousal).tolist()
        t4 = time.perf_counter()
        timings["postprocess"] = (t4 - t3) * 1e3
        timings["total"] = (t4 - t0) * 1e3
        for name, ms in timings.items():
            self._times[name].append(ms)
        self.last_timings = timings
        self._count += 1
        return Estimate(utterance_id=u.utterance_id, conversation_id=u.conversation_id,
                        speaker_id=u.speaker_id, start=u.start, end=u.end,
                        label=self.class_names[k] if used else "",
                        class_names=list(self.class_names),
                        probabilities=probs.astype(np.float32).tolist(), valence=float(valence),
                        arousal=float(arousal), modalities=used,
                        modality_weights=[float(x) for x in w], model_id=self.model_id,
                        backend=f"{self.backend_name}/{self.precision}",
                        latency_ms=timings["total"], text=u.text,
                        text_probabilities=text_probs.astype(np.float32).tolist(),
                        **face, **voice)

    def _fuse(self, baselines: SpeakerBaselines, speaker: str, text: np.ndarray, face: dict,
              voice: dict) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The senses' fused distribution (model's class order), the modalities it used and
        their weights; then the speaker's usual voice and face take in this reading."""
        order = self._face_order
        readings = readings_of(order, baselines, speaker, text, voice.get("voice_probabilities"),
                               face.get("face_probabilities"),
                               voice.get("voice_reason") == VOICE_UNFAMILIAR)
        fused, senses, shares = self.fusion.fuse(readings)
        if not senses:
            return np.zeros(0), [], np.zeros(0)
        return fused[order], [MODALITY[s] for s in senses], np.asarray(shares)

    def _face_fields(self, u: Utterance) -> dict:
        """The face expert's result carried by ``u`` (computed by the perception core while
        the person spoke), in this model's class order (the sense fusion's "face")."""
        fp = u.features.get("face_probabilities")
        out = {"face_status": u.face_status or FACE_DISABLED, "face_count": 0}
        if fp is None or u.face_status != FACE_SEEN:
            return out
        order = self._face_order
        if order is None:  # the model's classes are not the expert's seven
            return out
        p = np.asarray(fp, np.float64)[order]
        va = p @ self.valence_arousal
        return {**out, "face_probabilities": p.astype(np.float32).tolist(),
                "face_count": int(u.face_count), "face_valence": float(va[0]),
                "face_arousal": float(va[1])}

    def _voice_fields(self, u: Utterance) -> dict:
        """The voice expert's result carried by ``u`` (computed by the perception core when
        the utterance closed), in this model's class order (the sense fusion's "voice")."""
        vp = u.features.get("voice_probabilities")
        out = {"voice_status": u.voice_status or VOICE_DISABLED, "voice_reason": u.voice_reason}
        order = self._face_order  # the voice expert's classes are the face expert's
        if vp is None or u.voice_status != VOICE_OK or order is None:
            return out
        p = np.asarray(vp, np.float64)[order]
        va = p @ self.valence_arousal
        return {**out, "voice_probabilities": p.astype(np.float32).tolist(),
                "voice_valence": float(va[0]), "voice_arousal": float(va[1])}

    @functools.cached_property
    def _face_order(self) -> Optional[np.ndarray]:
        """Index into :data:`FACE_CLASSES` of each of the model's classes; None when the
        model's classes are not those seven."""
        names = [str(c).lower() for c in self.class_names]
        if sorted(names) != sorted(FACE_CLASSES):
            return None
        return np.array([FACE_CLASSES.index(c) for c in names])

    def _submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def _follow_history(self) -> None:
        """Drop the encodings of the utterances the history dropped (its bounds), so the
        fusion window is the history's; then count their bytes (for :meth:`stats`)."""
        for cid in list(self._encoded):
            n = self.history.count(cid)
            if n:
                self._encoded[cid].keep(n)
            else:
                del self._encoded[cid]
        self._encoded_bytes = sum(e.nbytes for e in self._encoded.values())

    # ------------------------------------------------------------------ state
    def reset(self, conversation_id: str | None = None) -> None:
        """Forget one conversation's context (or all of them)."""
        with self._lock:
            self.history.reset(conversation_id)
            self._follow_history()

    def context_length(self, conversation_id: str) -> int:
        return self.history.count(conversation_id)

    def snapshot(self, conversation_id: str):
        """A copy of one conversation's state (context + cached encodings)."""
        with self._lock:
            return (self.history.context(conversation_id),
                    copy.deepcopy(self._encoded.get(conversation_id)))

    def restore(self, conversation_id: str, snap) -> None:
        """Put back a :meth:`snapshot` (benchmarks time the same step repeatedly)."""
        utts, enc = snap
        with self._lock:
            self.history.reset(conversation_id)
            self._encoded.pop(conversation_id, None)
            for u in utts:
                self.history.add(u)
            if enc is not None:
                self._encoded[conversation_id] = copy.deepcopy(enc)
            self._follow_history()

    def stats(self) -> dict:
        """Counters and per-stage latency (ms, over the last 512 calls) for /diagnostics."""
        out = {"model_id": self.model_id, "backend": self.backend_name,
               "precision": self.precision, "where": self.where, "predictions": self._count,
               "errors": self._errors, "conversations": len(self.history.conversation_ids),
               "cached_utterances": len(self.history),
               # what the conversations' context holds: the past utterances as the history
               # keeps them (bounded by max_history_bytes), and their cached encodings
               "history_bytes": self.history.nbytes, "encoded_bytes": self._encoded_bytes}
        for name, vals in self._times.items():
            if vals:
                a = np.asarray(vals)
                out[f"{name}_ms_p50"] = float(np.percentile(a, 50))
                out[f"{name}_ms_p95"] = float(np.percentile(a, 95))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for b in self.stages.values():
            b.close()


# ---------------------------------------------------------------------- stage building

def _torch_stages(model, precision: str, threads: int) -> dict[str, Backend]:
    if precision not in ("fp32", "int8"):
        raise BackendUnavailable(f"torch runs fp32 or int8 (dynamic), not {precision!r}")
    stages = {}
    for stage in sorted(needed_stages(model), key=STAGES.index):
        mod = getattr(model, stage)
        if precision == "int8" and stage == "text_encoder":
            mod = _torch_int8(mod)
        ins, outs = stage_io(model, stage)
        stages[stage] = TorchBackend(mod, ins, outs, precision=precision, threads=threads)
    return stages


def _ort_stages(model_dir, needed, precision, threads, providers, cpu):
    """``(precision, {stage: backend}, why auto chose that precision or "")``; ``cpu``:
    :func:`~erc_ros.runtime.backends.cpu_int8` of this machine, for auto."""
    auto, chosen = precision == "auto", ""
    if auto:
        # Dynamic INT8 is a CPU technique (on a GPU it recomputes scales on the host: seed
        # 004 measured 616 ms on Orin); GPUs get FP16; CPUs INT8 where it pays (cpu_int8).
        gpu = choose_ort_providers(providers)[0] != "CPUExecutionProvider"
        if gpu:
            precision = "fp16"
        else:
            int8, chosen = cpu
            precision = "int8" if int8 else "fp32"
            log.info("precision auto: %s", chosen)
    files = find_stage_files(model_dir, "onnx", precision)
    fp32 = find_stage_files(model_dir, "onnx", "fp32")
    arts = read_manifest(model_dir).get("artefacts", {})
    stages = {}
    for stage in ("text_encoder", "audio_encoder", "video_encoder", "fusion"):
        if stage not in needed:
            continue
        rel, prec = files.get(stage), precision
        rejected = arts.get(rel, {}).get("rejected") if rel is not None else None
        if rel is not None and auto and rejected:
            # Quantization broke this stage (checked against FP32 when it was made,
            # erc_ros.runtime.quantize.rejection): automatic choice runs its FP32 export.
            log.warning("%s %s of %s was rejected when it was made (%s): running its fp32 "
                        "export", stage, precision, model_dir, rejected)
            rel = None
        if rel is None:
            rel, prec = fp32[stage], "fp32"
            if not rejected:
                log.info("no %s ONNX of %s: running its fp32 export", precision, stage)
        path, = verify_files(model_dir, [rel])
        stages[stage] = OrtBackend(path, providers=providers, threads=threads, precision=prec)
    if not any(b.precision == precision for b in stages.values()):
        precision = "fp32"
    return precision, stages, chosen


def current_engines(model_dir) -> dict[str, dict[str, str]]:
    """``stage -> {precision: relpath}`` of engines built for this device and TensorRT."""
    try:
        import tensorrt as trt

        device, sm = current_device()
    except Exception:  # noqa: BLE001 - no TensorRT here: no engines usable
        return {}
    out: dict[str, dict[str, str]] = {}
    for rel, e in runtime_artefacts(model_dir, "engine").items():
        if e.get("device") == device and list(e.get("sm", [])) == list(sm) and \
                e.get("trt_version") == trt.__version__:
            out.setdefault(e["stage"], {})[e["precision"]] = rel
    return out


def _trt_stages(model_dir, model, needed, engines, precision, threads):
    if precision == "auto":
        precision = "int8" if any("int8" in v for v in engines.values()) else "fp16"
    arts = read_manifest(model_dir)["artefacts"]
    fp32 = find_stage_files(model_dir, "onnx", "fp32")
    stages = {}
    for stage in ("text_encoder", "audio_encoder", "video_encoder", "fusion"):
        if stage not in needed:
            continue
        rel = engines.get(stage, {}).get(precision) or engines.get(stage, {}).get("fp16")
        if rel is not None:
            path, = verify_files(model_dir, [rel])
            meta = arts[rel]
            buckets = meta.get("buckets") if stage == "text_encoder" else None
            stages[stage] = TensorRTBackend(
                path, precision=meta["precision"],
                sequence_buckets=buckets or (DEFAULT_BUCKETS if stage == "text_encoder" else None),
                pad_values={"input_ids": int(model.preprocessor.pad_id)})
        elif stage in fp32:  # no engine for this stage: ONNX Runtime on the GPU providers
            path, = verify_files(model_dir, [fp32[stage]])
            stages[stage] = OrtBackend(path, threads=threads)
        else:
            ins, outs = stage_io(model, stage)
            stages[stage] = TorchBackend(getattr(model, stage), ins, outs, threads=threads)
    return precision, stages
