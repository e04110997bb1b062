"""Utterance media for training, read as the perception core reads live input.

A model's audio and video encoders see, live, what :class:`~erc_ros.core.perception
.PerceptionCore` builds: 16 kHz mono audio, the speaker's face crops chosen by the core's
face selection, and the diarization d-vector in ``Utterance.features["speaker_embedding"]``.
Training must feed them the same, so each utterance's clip goes through the same code with
the live settings (:class:`~erc_ros.core.config.PerceptionConfig` defaults, the nodes'
configuration):

- audio: the clip's audio track decoded with PyAV and resampled to mono float32 16 kHz (a
  ``.wav`` beside a ``.mp4`` of the same stem wins, as MELD.Raw users often extract one);
  silero-vad over it, as the core runs it, for the voice activity below;
- video: frames decoded with PyAV, thinned to ``faces.store_fps`` and downscaled to
  ``faces.store_max_width`` by the core's own :class:`~erc_ros.core.faces.FrameBuffer`
  (stamps in seconds), faces detected on them at ``faces.detect_fps`` as while a person
  speaks, then the crops the core cuts when the utterance closes
  (:func:`~erc_ros.core.faces.speaker_faces`: the core's detector, frame choice and
  speaker selection weighted by voice activity). No face found: no crops, and the video
  modality is absent for that utterance, as live;
- speaker d-vector: :meth:`~erc_ros.core.diarization.SpeakerEmbedder.clip_embedding`, the
  windows the core embeds while the person speaks plus the tail window.

Each clip is decoded once: the result (audio float32, crops uint8, d-vector) is kept in an
``.npz`` under ``<cache>/media`` (:func:`erc_ros.paths.cache_root`), keyed by the sha256 of
the files read, the span, and the settings above; a later run reads it. A file that cannot
be decoded is named in a one-line warning and its utterance keeps its text only (an IEMOCAP
utterance whose dialogue video cannot be read keeps its WAV's audio); nothing stops the run. :meth:`MediaReader.summary` counts clips
read, from the cache, with audio, with a face, failed and missing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from erc_ros import process
from erc_ros.core.audio_buffer import read_wav_16k
from erc_ros.core.config import PerceptionConfig
from erc_ros.core.diarization import SpeakerEmbedder
from erc_ros.core.faces import FrameBuffer, detector_for, due_for_detection, speaker_faces
from erc_ros.core.types import SAMPLE_RATE, Frame, Utterance
from erc_ros.core.vad import SileroVad, activity_at, clip_probabilities, speech_ratio_of
from erc_ros.datasets.dialogues import Dialogue, MediaRef
from erc_ros.jobs import RayJobs
from erc_ros.paths import cache_root, sha256_file

#: Bumped when what a cache entry holds, or how it is made, changes.
MEDIA_FORMAT = 1
#: A clip longer than this is not one utterance (a whole episode put in the folder, a
#: corrupt duration): refused before it fills memory (10 min of 16 kHz audio is 38 MB).
#: IEMOCAP's dialogue recordings, cut into spans, are streamed and not bound by it.
MAX_CLIP_SECONDS = 600.0
#: Frames larger than this (8K UHD) are refused before they are converted to RGB.
MAX_FRAME_PIXELS = 7680 * 4320
#: A WAV beside a clip larger than this (MAX_CLIP_SECONDS at 96 kHz, 2 channels, 32 bits) is
#: refused before it is read.
MAX_WAV_BYTES = int(MAX_CLIP_SECONDS * 96000 * 2 * 4)


def _existing(path: Optional[Path]) -> Optional[Path]:
    return path if path is not None and path.is_file() else None


@dataclass
class ClipMedia:
    """One utterance's media as the perception core would have built it."""

    audio: np.ndarray  # float32, 16 kHz mono (empty: none)
    faces: list = field(default_factory=list)  # the speaker's crops, HxWx3 uint8 RGB
    speaker_embedding: Optional[np.ndarray] = None  # the diarization d-vector
    cached: bool = False

    def attach(self, u: Utterance) -> None:
        """Put the media into ``u`` where the core puts them."""
        u.audio = self.audio
        u.sample_rate = SAMPLE_RATE
        u.faces = list(self.faces)
        if self.speaker_embedding is not None:
            u.features["speaker_embedding"] = self.speaker_embedding


def attach_media(dialogues: Sequence[Dialogue], reader: Optional["MediaReader"] = None,
                 progress: bool = False) -> dict:
    """Decode every utterance's media (``Dialogue.media``) into the utterances, as the core
    would have built them (a small set: they stay in memory). Returns the reader's summary
    (and prints it)."""
    reader = reader or MediaReader(progress=progress)
    for d, medias in reader.iter_dialogues(dialogues):
        for u, m in zip(d.utterances, medias):
            if m is not None:
                m.attach(u)
    reader.report()
    return reader.summary()


def decode_audio(path: str | Path, max_seconds: Optional[float] = None) -> np.ndarray:
    """The first audio track of a media file as mono float32 at 16 kHz (empty when the
    file has no audio track); ValueError past ``max_seconds`` (default
    :data:`MAX_CLIP_SECONDS`)."""
    import av

    max_seconds = MAX_CLIP_SECONDS if max_seconds is None else max_seconds
    parts, n, limit = [], 0, int(max_seconds * SAMPLE_RATE)
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return np.zeros(0, np.float32)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in c.decode(c.streams.audio[0]):
            got = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            parts += got
            n += sum(g.size for g in got)
            if n > limit:
                raise ValueError(f"audio longer than {max_seconds:g} s: not one utterance's "
                                 "clip")
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def decode_frames(path: str | Path, store_fps: float, max_seconds: float = math.inf
                  ) -> Iterator[tuple[float, np.ndarray]]:
    """(stamp in s from the file's start, RGB image) of the first video track, thinned to
    ``store_fps`` as :class:`~erc_ros.core.faces.FrameBuffer` thins (a frame closer than
    ``1 / store_fps`` to the last kept one is skipped before it is even converted).
    ValueError for frames over :data:`MAX_FRAME_PIXELS` or a stamp past ``max_seconds``."""
    import av

    min_dt = 1.0 / store_fps if store_fps > 0 else 0.0
    with av.open(str(path)) as c:
        if not c.streams.video:
            return
        st = c.streams.video[0]
        w, h = st.codec_context.width or 0, st.codec_context.height or 0
        if w * h > MAX_FRAME_PIXELS:
            raise ValueError(f"{w}x{h} video frames are larger than 8K")
        st.thread_type = "AUTO"
        offset = (c.start_time or 0) / av.time_base
        rate = float(st.average_rate or 25)
        last = -math.inf
        for i, frame in enumerate(c.decode(st)):
            t = (frame.time if frame.time is not None else i / rate) - offset
            if abs(t - last) < min_dt:
                continue
            if t > max_seconds:
                raise ValueError(f"video longer than {max_seconds:g} s: not one utterance's clip")
            if frame.width * frame.height > MAX_FRAME_PIXELS:
                raise ValueError(f"a {frame.width}x{frame.height} frame is larger than 8K")
            last = t
            yield t, frame.to_ndarray(format="rgb24")


def _activity(probs, offset: float):
    """Voice activity at given stamps from (window times from ``offset``, probabilities),
    as the core's VAD reports it (None without audio: uniform)."""
    if probs is None:
        return None

    ts, ps = probs
    return lambda times: activity_at(ts + offset, ps, times)


class MediaReader:
    """Reads utterances' media (:class:`~erc_ros.datasets.dialogues.MediaRef`) as the perception
    core built with ``config`` (default: the nodes' defaults) reads live input; see the
    module documentation. ``cache_dir``: default ``<cache>/media``; ``use_cache`` False
    decodes everything again (and stores nothing)."""

    def __init__(self, config=None, cache_dir: str | Path | None = None,
                 use_cache: bool = True, progress: bool = True):

        cfg = config or PerceptionConfig()
        self.config = cfg
        self.faces_config = replace(cfg.faces, crops=True)  # training always wants the crops
        self.diarization = cfg.diarization
        self.vad_threshold = cfg.vad.threshold
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "media"
        self.use_cache = use_cache
        self.progress = progress
        self.counters = dict(clips=0, from_cache=0, with_audio=0, with_face=0, failed=0,
                             missing=0)
        self.failed_files: list[str] = []
        self._detector = self._vad = self._embedder = None
        self._hashes: Optional[dict] = None
        self._bar = None
        self._store_failed = False
        fc, dz = self.faces_config, self.diarization
        settings = {
            "format": MEDIA_FORMAT, "sample_rate": SAMPLE_RATE,
            "faces": {k: getattr(fc, k) for k in (
                "enabled", "count", "size", "margin", "buffer_seconds", "store_fps",
                "store_max_width", "detect_width", "detect_frames", "detect_fps",
                "min_face_fraction", "use_av_activity")},
            "diarization": {k: getattr(dz, k) for k in ("enabled", "window_seconds",
                                                        "step_seconds", "min_voiced")},
            "vad_threshold": self.vad_threshold}
        self.settings = settings
        self.settings_key = hashlib.sha256(
            json.dumps(settings, sort_keys=True).encode()).hexdigest()

    # -- the parts of the core, made when a clip first needs them ------------------------
    @property
    def detector(self):
        if self._detector is None:

            self._detector = detector_for(self.faces_config)
        return self._detector

    @property
    def vad(self):
        if self._vad is None:

            self._vad = SileroVad(threads=1)
        return self._vad

    @property
    def embedder(self):
        if self._embedder is None:

            self._embedder = SpeakerEmbedder(self.diarization)
            self._embedder.load(warmup=False)
        return self._embedder

    # -- reading -------------------------------------------------------------------------
    def read_on_ray(self, dialogues: Sequence[Dialogue], jobs, chunk: int = 4) -> dict:
        """Read the clips of ``dialogues`` into the cache as Ray tasks of ``chunk``
        dialogues each (:class:`erc_ros.jobs.RayJobs`): each task reads them with this
        reader's settings, as :meth:`read_dialogue` does here, and stores them in this
        reader's cache folder, which the workers must share (one machine, or a shared
        file system); :meth:`iter_dialogues` then finds them there. A clip a worker could
        not read is read again here (and warned about as usual); a task that failed as a
        whole (its worker died) is reported. Returns the workers' counters summed, with
        ``failed_tasks``."""

        if not self.use_cache:
            raise ValueError("reading clips on Ray needs the cache (use_cache=True): the "
                             "workers hand the clips over through it")
        parts = [list(dialogues[i:i + chunk]) for i in range(0, len(dialogues), chunk)]
        total = {k: 0 for k in self.counters}
        total["failed_tasks"] = 0
        clips = sum(1 for d in dialogues for m in d.media if m is not None)
        with tqdm(total=clips, desc="clips on Ray", unit="clip",
                  disable=not self.progress) as bar:
            pieces = [(i, (self.config, str(self.cache_dir), part))
                      for i, part in enumerate(parts)]
            for o in jobs.map(read_chunk, pieces):
                part = parts[o.key]
                bar.update(sum(1 for d in part for m in d.media if m is not None))
                if o.ok:
                    for k, v in o.value.items():
                        total[k] = total.get(k, 0) + v
                else:
                    total["failed_tasks"] += 1
                    self._write(f"warning: clips of dialogues {part[0].conversation_id}.."
                                f"{part[-1].conversation_id} were not read on Ray ({o.error}); "
                                f"they are read here")
        return total

    def iter_dialogues(self, dialogues: Sequence[Dialogue], desc: str = "media"
                       ) -> Iterator[tuple[Dialogue, list[Optional[ClipMedia]]]]:
        """(dialogue, one ClipMedia or None per utterance) for each dialogue, with a
        progress bar over the clips."""

        total = sum(1 for d in dialogues for m in d.media if m is not None)
        with tqdm(total=total, desc=desc, unit="clip", disable=not self.progress) as bar:
            self._bar = bar
            try:
                for d in dialogues:
                    yield d, self.read_dialogue(d)
            finally:
                self._bar = None
                self.save_hashes()

    def read_dialogue(self, d: Dialogue) -> list[Optional[ClipMedia]]:
        """Each utterance's media (None: none, or unreadable). Spans of one recording
        (IEMOCAP's dialogue AVI) are cut from a single pass over it."""
        out: list[Optional[ClipMedia]] = [None] * len(d.utterances)
        spans: dict[Path, list[int]] = {}
        for i, ref in enumerate(d.media):
            if ref is None:
                continue
            if ref.start is not None and ref.video is not None:
                spans.setdefault(ref.video, []).append(i)
            else:
                out[i] = self.read(ref)
        for video, idx in spans.items():
            for i, m in zip(idx, self._read_spans(video, [d.media[i] for i in idx])):
                out[i] = m
        return out

    def read(self, ref: MediaRef) -> Optional[ClipMedia]:
        """One whole clip (MELD.Raw): its audio (the WAV if there is one) and the speaker's
        face over its length."""
        video, wav = _existing(ref.video), _existing(ref.wav)
        if video is None and wav is None:
            return self._done(None, missing=ref.video or ref.wav)
        try:
            key = self._key(ref, video, wav)
        except OSError as e:
            return self._done(None, failed=(video or wav, e))
        media = self._load(key)
        if media is not None:
            return self._done(media)
        try:
            if wav is not None and wav.stat().st_size > MAX_WAV_BYTES:
                raise ValueError(f"a WAV of {wav.stat().st_size >> 20} MB is longer than "
                                 f"{MAX_CLIP_SECONDS:g} s: not one utterance's clip")
            audio = read_wav_16k(wav) if wav is not None else decode_audio(video)
            probs = self._speech_probabilities(audio)
            faces = []
            if video is not None:
                end = audio.size / SAMPLE_RATE if audio.size else None
                faces = self.span_faces(decode_frames(video, self.faces_config.store_fps,
                                                      MAX_CLIP_SECONDS),
                                        [(0.0, end, _activity(probs, 0.0))])[0]
            media = ClipMedia(audio, faces, self._embedding(audio, probs))
        except Exception as e:  # a broken file: text only for this utterance
            return self._done(None, failed=(video or wav, e))
        self._store(key, media)
        return self._done(media)

    def _read_spans(self, video: Path, refs: list[MediaRef]) -> list[Optional[ClipMedia]]:
        """Utterances cut from one recording: each one's audio from its WAV, the faces from
        one pass over ``video`` (a missing video leaves them without faces)."""
        have_video = video.is_file()
        out: list[Optional[ClipMedia]] = [None] * len(refs)
        todo = []
        for j, ref in enumerate(refs):
            wav = _existing(ref.wav)
            if wav is None and not have_video:
                out[j] = self._done(None, missing=ref.wav or video)
                continue
            try:
                key = self._key(ref, video if have_video else None, wav)
                media = self._load(key)
                if media is None:
                    audio = read_wav_16k(wav) if wav is not None else np.zeros(0, np.float32)
                    todo.append((j, key, audio, self._speech_probabilities(audio)))
                else:
                    out[j] = self._done(media)
            except Exception as e:
                out[j] = self._done(None, failed=(wav or video, e))
        if not todo:
            return out
        faces: list[list] = [[] for _ in todo]
        video_ok = have_video
        if have_video:
            try:
                faces = self.span_faces(decode_frames(video, self.faces_config.store_fps),
                                        [(refs[j].start, refs[j].end,
                                          _activity(pr, refs[j].start))
                                         for j, _, _, pr in todo])
            except Exception as e:  # the recording is unreadable: its utterances keep audio
                self._warn(video, e, "its utterances keep their text and audio")
                self.counters["failed"] += 1
                video_ok = False
        for (j, key, audio, probs), crops in zip(todo, faces):
            try:
                media = ClipMedia(audio, crops, self._embedding(audio, probs))
            except Exception as e:
                out[j] = self._done(None, failed=(refs[j].wav, e))
                continue
            if video_ok or not have_video:  # never keep a failure: the next run tries again
                self._store(key, media)
            out[j] = self._done(media)
        return out

    def span_faces(self, frames_in, spans: list[tuple]) -> list[list]:
        """The speaker's crops for each ``(start, end or None, activity)`` span of a video
        given as ``(stamp, RGB image)`` in time order (:func:`decode_frames`), in one pass:
        frames go into a :class:`FrameBuffer` as live; a span closes once the stream passes
        its end (None: the end of the video). ``activity``: voice activity at given stamps
        (None: uniform)."""

        fc = self.faces_config
        out: list[list] = [[] for _ in spans]
        if not fc.enabled:
            return out
        longest = max((e - s for s, e, _ in spans if e is not None), default=0.0)
        frames = FrameBuffer(max(fc.buffer_seconds, longest + 1.0), fc.store_fps,
                             fc.store_max_width, clock_reset_s=math.inf)
        order = sorted(range(len(spans)), key=lambda j: math.inf if spans[j][1] is None
                       else spans[j][1])

        def close(j: int, last: float) -> None:
            start, end, activity = spans[j]
            end = last if end is None else end
            # Detection while the person speaks (the core's rule, at every poll), then the
            # choice it makes when the utterance closes.
            while (f := due_for_detection(frames.frames, start, fc.detect_fps)) is not None \
                    and f.stamp <= end:
                self.detector.boxes(f)
            _, sel = speaker_faces(frames, self.detector, fc, start, end, activity)
            out[j] = [np.ascontiguousarray(c, dtype=np.uint8) for c in sel.crops]

        k, last = 0, -math.inf
        for t, img in frames_in:
            while k < len(order) and spans[order[k]][1] is not None and t > spans[order[k]][1]:
                close(order[k], last)
                k += 1
            if k == len(order):
                break
            frames.push(Frame(t, img))
            last = t
        while k < len(order):
            close(order[k], last)
            k += 1
        return out

    def _speech_probabilities(self, audio: np.ndarray):
        """(window times, speech probabilities) of the core's VAD over ``audio`` (None
        without audio)."""
        if not audio.size:
            return None

        return clip_probabilities(self.vad, audio)

    def _embedding(self, audio: np.ndarray, probs) -> Optional[np.ndarray]:
        if not self.diarization.enabled or probs is None:
            return None

        ts, ps = probs
        th = self.vad_threshold
        return self.embedder.clip_embedding(
            audio, voiced=lambda a, b: speech_ratio_of(ps[(ts >= a) & (ts < b)], th))

    # -- bookkeeping ---------------------------------------------------------------------
    def _done(self, media: Optional[ClipMedia], missing=None, failed=None):
        c = self.counters
        c["clips"] += 1
        if missing is not None:
            c["missing"] += 1
            if c["missing"] <= 5:
                self._write(f"warning: {missing}: no such media file; the utterance keeps "
                            f"its text only")
        elif failed is not None:
            self._warn(*failed, "the utterance keeps its text only")
            c["failed"] += 1
        elif media is not None:
            c["from_cache"] += int(media.cached)
            c["with_audio"] += int(media.audio.size > 0)
            c["with_face"] += int(len(media.faces) > 0)
        if self._bar is not None:
            self._bar.update(1)
        return media

    def _warn(self, path, err: Exception, consequence: str) -> None:
        self.failed_files.append(str(path))
        msg = " ".join(str(err).split()) or type(err).__name__
        self._write(f"warning: {path}: cannot decode ({msg}); {consequence}")

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def summary(self) -> dict:
        return dict(self.counters, cache=str(self.cache_dir), settings_sha256=self.settings_key)

    def report(self, what: str = "media") -> str:
        c = self.counters
        line = (f"{what}: {c['clips']} clips read ({c['from_cache']} from the cache "
                f"{self.cache_dir}), {c['with_audio']} with audio, {c['with_face']} with a "
                f"face; {c['failed']} files could not be decoded, {c['missing']} clips missing")
        print(line, file=sys.stderr)
        return line

    # -- the cache -----------------------------------------------------------------------
    def _sha(self, path: Path) -> str:
        """sha256 of a file, remembered by (path, size, mtime) in the cache folder: the
        clips are hashed once, not at every run."""

        if self._hashes is None:
            try:
                self._hashes = json.loads((self.cache_dir / "file-hashes.json").read_text())
            except (OSError, ValueError):
                self._hashes = {}
        st = path.stat()
        name = str(path.resolve())
        known = self._hashes.get(name)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return known[2]
        h = sha256_file(path)
        self._hashes[name] = [st.st_size, st.st_mtime_ns, h]
        return h

    def save_hashes(self) -> None:
        """Keep the clips' sha256s for the next run (:meth:`iter_dialogues` does it)."""
        if not self.use_cache or not self._hashes:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".file-hashes.{os.getpid()}.json"
        tmp.write_text(json.dumps(self._hashes))
        os.replace(tmp, self.cache_dir / "file-hashes.json")

    def _key(self, ref: MediaRef, video: Optional[Path], wav: Optional[Path]) -> str:
        parts = [self.settings_key, self._sha(video) if video else "",
                 self._sha(wav) if wav else "", repr(ref.start), repr(ref.end)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.npz"

    def _load(self, key: str) -> Optional[ClipMedia]:
        f = self._path(key)
        if not self.use_cache or not f.is_file():
            return None
        try:
            with np.load(f) as z:
                emb = z["speaker_embedding"]
                return ClipMedia(z["audio"].astype(np.float32), list(z["faces"]),
                                 emb.astype(np.float32) if emb.size else None, cached=True)
        except (OSError, ValueError, KeyError):  # a damaged entry is made again
            return None

    def _store(self, key: str, media: ClipMedia) -> None:
        if not self.use_cache:
            return
        f = self._path(key)
        f.parent.mkdir(parents=True, exist_ok=True)
        s = self.faces_config.size
        faces = np.stack(media.faces).astype(np.uint8) if media.faces else \
            np.zeros((0, s, s, 3), np.uint8)
        emb = media.speaker_embedding if media.speaker_embedding is not None else \
            np.zeros(0, np.float32)
        tmp = f.with_name(f".{f.stem}.{os.getpid()}.npz")
        try:
            np.savez(tmp, audio=media.audio.astype(np.float32), faces=faces,
                     speaker_embedding=np.asarray(emb, np.float32))
            os.replace(tmp, f)
        except OSError as e:  # a full disk costs the cache, not the run
            tmp.unlink(missing_ok=True)
            if not self._store_failed:
                self._write(f"warning: cannot write the media cache {self.cache_dir} ({e}); "
                            "going on without it")
            self._store_failed = True


def read_chunk(config, cache_dir: str, dialogues: Sequence[Dialogue]) -> dict:
    """A Ray task of :meth:`MediaReader.read_on_ray`: read ``dialogues``' clips into the
    cache at ``cache_dir``; returns the reader's counters. The worker's torch runs on the
    one CPU Ray gives the task."""
    process.configure(torch_threads=1, by="erc_ros media worker")
    reader = MediaReader(config, cache_dir=cache_dir, progress=False)
    for d in dialogues:
        reader.read_dialogue(d)
    return dict(reader.counters)


def prefetch_on_ray(reader: MediaReader, dialogues: Sequence[Dialogue], workers: int = 0,
                    address: Optional[str] = None) -> dict:
    """:meth:`MediaReader.read_on_ray` on a local Ray of ``workers`` CPUs or the cluster at
    ``address``; prints a line of what it did. RuntimeError: Ray is not installed."""

    with RayJobs(workers, address) as jobs:
        counts = reader.read_on_ray(dialogues, jobs)
        counts["ray_start_s"] = round(jobs.start_seconds, 2)
        counts["cpus"] = jobs.cpus
    reader._write(f"clips read on Ray ({counts['cpus']} CPUs): {counts['clips']} "
                  f"({counts['from_cache']} already in the cache), {counts['failed']} "
                  f"failed, {counts['failed_tasks']} task(s) lost")
    return counts
