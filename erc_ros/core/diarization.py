"""Online speaker diarization: streaming speaker embeddings and online clustering.

:class:`SpeakerEmbedder` embeds speech *while the person speaks*: every ``step_seconds`` it
takes the last ``window_seconds`` (1.6 s, resemblyzer's partial length) of voiced audio and runs
resemblyzer's d-vector LSTM on it, keeping ``(t0, t1, embedding, weight)`` in a bounded
history. When an utterance closes, its embedding is the weighted mean of the windows inside
its span plus, if a tail of more than ``min_tail_s`` is still uncovered, one more window over
it: the cost after the final ASR result is at most one 1.6 s partial (~5-10 ms here), not a
pass over the whole utterance. With ``embed_on_pause`` that tail is embedded as soon as the
speech goes quiet (the VAD's hang-over starts), so an ASR result arriving during the
hang-over costs no embedding at all.

:class:`OnlineDiarizer` turns embeddings into speaker ids that never change once given:
an upstream hint (ROS4HRI voice id) wins; then enrolled people (name -> voice sample) above
``enroll_threshold``; then the nearest running centroid above ``threshold``; otherwise a
new cluster, but only for utterances long enough to trust (``min_new_speaker_seconds``) and
while fewer than ``max_speakers`` exist — short or overflow utterances go to the nearest
cluster with a low confidence. Ids stay stable: published ids never change; when two clusters'
centroids converge (above ``merge_threshold``: one person split in two by an atypical
first utterance), the younger id is retired and later utterances get the older one.

:func:`enroll_voices` enrols a folder of voice samples (``diarization.voices``).
"""
from __future__ import annotations

import itertools
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import scipy.fft
from scipy.signal import get_window

from .audio_buffer import read_wav_16k
from .config import DiarizationConfig
from .errors import InputError
from .types import SAMPLE_RATE

PARTIAL_SAMPLES = 25600  # resemblyzer partial: 160 mel frames of 10 ms
SPAN_TOLERANCE_S = 0.15  # a stored window belongs to a span it overhangs by at most this
#: A tail window made at a pause stands for the close's when both ends agree this closely
#: (the VAD's padded speech end vs the ASR's end: ~50 ms apart on the demo bag).
PAUSE_MATCH_S = 0.1


def _import_resemblyzer():
    """Import resemblyzer (its ``webrtcvad`` imports ``pkg_resources``: setuptools is pinned
    below 81 in requirements.txt for it; its deprecation warning is silenced here)."""

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                                category=UserWarning)
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                                category=DeprecationWarning)
        import resemblyzer
    from resemblyzer.audio import normalize_volume

    return resemblyzer, normalize_volume


class MelFrames:
    """resemblyzer's ``wav_to_mel_spectrogram`` (librosa power mel, 25 ms windows, 10 ms
    hop, 40 bands, centred with zero padding) in plain numpy: same values to ~1e-7, twice
    as fast, computed with one FFT call per window."""

    def __init__(self):
        import librosa

        fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=400, n_mels=40)
        self.fb_t = np.ascontiguousarray(fb.T, dtype=np.float32)
        self.win = get_window("hann", 400, fftbins=True).astype(np.float32)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        x = np.pad(np.asarray(wav, np.float32), 200)
        n = 1 + (x.size - 400) // 160
        frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160][:n] * self.win
        spec = scipy.fft.rfft(frames, axis=1, workers=1)
        power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
        return power @ self.fb_t


class SpeakerEmbedder:
    """resemblyzer d-vectors (256-d, unit norm) of audio windows, computed incrementally."""

    dim = 256

    def __init__(self, config: Optional[DiarizationConfig] = None, history_s: float = 120.0,
                 batch: int = 4, min_tail_s: float = 0.4):
        """``config``: its window, step, voiced fraction and ``embed_on_pause``;
        ``history_s``: windows kept; ``batch``: windows per model call; ``min_tail_s``: a
        tail this short past the stored windows needs no window of its own."""
        self.config = c = config or DiarizationConfig()
        self.window = int(round(c.window_seconds * SAMPLE_RATE))
        self.step = int(round(c.step_seconds * SAMPLE_RATE))
        self.min_tail = min_tail_s
        self.batch = batch
        # (t0, t1, embedding, weight): regular windows weigh 1, a tail window its new share
        self.history: deque = deque(maxlen=max(8, int(history_s / c.step_seconds)))
        self.next_index = 0
        self._onset_done = -1  # the VAD onsets found up to this index moved the grid
        self.windows = 0
        self.pause_windows = 0  # tail windows made at a pause
        self.pause_reused = 0  # ... and used by the close instead of making one
        self._pause_tail = None
        self._pause_done: Optional[float] = None
        self._enc = None

    # -- model -------------------------------------------------------------------------
    def load(self, warmup: bool = True) -> None:
        if self._enc is not None:
            return
        import torch

        resemblyzer, self._norm = _import_resemblyzer()
        self._mel = MelFrames()
        self._torch = torch
        self._enc = resemblyzer.VoiceEncoder("cpu", verbose=False)
        if warmup:  # the first LSTM calls per batch size are slow; pay for them now
            rng = np.random.default_rng(0)
            for n in range(1, self.batch + 1):
                self.embed_windows([rng.standard_normal(self.window).astype(np.float32) * 0.1] * n)

    def _mels(self, wavs: list[np.ndarray]) -> np.ndarray:
        frames = PARTIAL_SAMPLES // 160
        out = []
        for w in wavs:
            w = self._norm(np.asarray(w, np.float32), -30, increase_only=True)
            if w.size < PARTIAL_SAMPLES:
                w = np.pad(w, (0, PARTIAL_SAMPLES - w.size))
            m = self._mel(w[:PARTIAL_SAMPLES])[:frames]
            out.append(m)
        return np.stack(out).astype(np.float32)

    def embed_windows(self, wavs: list[np.ndarray]) -> np.ndarray:
        """Unit d-vectors of 1.6 s windows (shorter ones are zero-padded), shape (n, 256)."""
        self.load(warmup=False)
        if not wavs:
            return np.zeros((0, self.dim), np.float32)
        with self._torch.inference_mode():
            e = self._enc(self._torch.from_numpy(self._mels(wavs))).numpy()
        return e.astype(np.float32)

    def embed_audio(self, wav: np.ndarray) -> np.ndarray:
        """Embedding of a whole recording (e.g. an enrolment sample): mean of its partials."""
        wav = np.asarray(wav, np.float32)
        if wav.size <= self.window:
            wins = [wav]
        else:
            starts = list(range(0, wav.size - self.window + 1, self.step))
            if starts[-1] + self.window < wav.size:
                starts.append(wav.size - self.window)
            wins = [wav[s:s + self.window] for s in starts]
        e = np.concatenate([self.embed_windows(wins[i:i + self.batch])
                            for i in range(0, len(wins), self.batch)])
        return _unit(e.mean(axis=0))

    # -- streaming ---------------------------------------------------------------------
    def reset(self, next_index: int = 0) -> None:
        self.history.clear()
        self.next_index = next_index
        self._onset_done = -1
        self._pause_done = None
        self._pause_tail = None

    def process(self, buffer, vad) -> int:
        """Embed every complete, mostly voiced window the VAD has already seen. Windows start
        at speech onsets and every ``step`` after; returns how many were embedded.

        Where the windows lie depends on the audio alone, not on how it was batched into
        calls: each onset moves the window grid at the point the VAD found it (the windows
        up to there are placed first), as if this ran after every VAD window. Looking only at
        the segment open at call time would not do: after a stall, a backlog that opens and
        closes a segment in one call would get other windows, and another speaker."""
        self.next_index = max(self.next_index, buffer.n_start)
        pending: list[tuple[int, np.ndarray]] = []
        limit = min(buffer.n_end, vad.next_index)  # what the VAD has seen
        new = list(itertools.takewhile(lambda o: o[0] > self._onset_done, reversed(vad.onsets)))
        for found_at, start in reversed(new):  # only the onsets not yet applied, in order
            self._scan(buffer, vad, min(limit, found_at), pending)
            self.next_index = max(self.next_index, buffer.index_of(start), buffer.n_start)
            self._onset_done = found_at
        self._scan(buffer, vad, limit, pending)
        for k in range(0, len(pending), self.batch):
            part = pending[k:k + self.batch]
            embs = self.embed_windows([w for _, w in part])
            for (i0, _), e in zip(part, embs):
                self.history.append((buffer.time_of(i0), buffer.time_of(i0 + self.window), e, 1.0))
        self.windows += len(pending)
        return len(pending) + (self._embed_pause(buffer, vad) if self.config.embed_on_pause else 0)

    def _scan(self, buffer, vad, limit: int, pending: list) -> None:
        """Add to ``pending`` the mostly voiced windows that end by ``limit``."""
        while self.next_index + self.window <= limit:
            i0 = self.next_index
            t0, t1 = buffer.time_of(i0), buffer.time_of(i0 + self.window)
            if vad.speech_ratio(t0, t1) >= self.config.min_voiced:
                pending.append((i0, buffer.read_index(i0, i0 + self.window)))
                self.next_index += self.step
            else:
                # Not enough speech: move on by a VAD-sized hop to find the next onset.
                self.next_index += max(self.step // 2, 512)

    def _embed_pause(self, buffer, vad) -> int:
        """The speech in progress went quiet: compute now, while the VAD's hang-over runs,
        the tail window the utterance's close would compute if it ends here (after the final
        ASR result, on the latency path). Kept aside, not added to the stream windows: the
        close uses it only when the utterance really ends at this pause (within
        ``PAUSE_MATCH_S``), so the embedding is the one the close would have made."""
        t1 = vad.pause_start
        if t1 is None or t1 == self._pause_done or vad.open_start is None:
            return 0
        self._pause_done = t1
        t0 = vad.open_start
        covered_to = max((b for a, b, _, _ in self.history
                          if a >= t0 - SPAN_TOLERANCE_S and b <= t1 + SPAN_TOLERANCE_S),
                         default=t0)
        computed = self._tail_window(t0, t1, covered_to, buffer)
        if computed is None:
            return 0
        self._pause_tail = computed
        self.pause_windows += 1
        return 1

    def _tail_window(self, t0: float, t1: float, covered_to: float, buffer,
                     use_pause: bool = False):
        """(a, t1, embedding, weight) of the window ending at ``t1`` when more than
        ``min_tail`` of [t0, t1] after ``covered_to`` is uncovered (or nothing is), else None;
        its weight is the share of new audio it brings."""
        tail = t1 - covered_to
        if covered_to > t0 and tail <= self.min_tail:
            return None
        a = max(t0, t1 - self.window / SAMPLE_RATE)
        weight = min(1.0, max(tail, 0.3) / (self.window / SAMPLE_RATE))
        ready = self._pause_tail
        if use_pause and ready is not None and abs(ready[1] - t1) <= PAUSE_MATCH_S and \
                abs(ready[0] - a) <= PAUSE_MATCH_S:
            self.pause_reused += 1
            return ready[0], ready[1], ready[2], weight  # made at the pause: same window
        wav = buffer.read(a, t1)
        if wav.size < int(0.3 * SAMPLE_RATE) or np.abs(wav).max() <= 1e-4:
            return None
        return a, t1, self.embed_windows([wav])[0], weight

    def clip_embedding(self, wav: np.ndarray,
                       voiced: Optional[Callable[[float, float], float]] = None
                       ) -> Optional[np.ndarray]:
        """The embedding :meth:`utterance_embedding` makes live for an utterance whose audio
        is the whole of ``wav`` (training reads clips, not a stream): the windows
        :meth:`process` embeds while the person speaks (from the start, one every ``step``
        while ``voiced(t0, t1)``, the VAD's speech ratio, reaches ``min_voiced``; every one
        when ``voiced`` is None), then the tail window over what they leave uncovered."""
        wav = np.asarray(wav, np.float32).reshape(-1)
        starts, i = [], 0
        while i + self.window <= wav.size:
            a, b = i / SAMPLE_RATE, (i + self.window) / SAMPLE_RATE
            if voiced is None or voiced(a, b) >= self.config.min_voiced:
                starts.append(i)
                i += self.step
            else:  # as process(): a VAD-sized hop to the next onset
                i += max(self.step // 2, 512)
        vecs = [e for k in range(0, len(starts), self.batch)
                for e in self.embed_windows([wav[s:s + self.window]
                                             for s in starts[k:k + self.batch]])]
        weights = [1.0] * len(vecs)
        covered_to = max(((s + self.window) / SAMPLE_RATE for s in starts), default=0.0)
        tail = self._tail_window(0.0, wav.size / SAMPLE_RATE, covered_to, _ClipAudio(wav))
        if tail is not None:
            vecs.append(tail[2])
            weights.append(tail[3])
        return _unit(np.average(np.stack(vecs), axis=0, weights=weights)) if vecs else None

    def utterance_embedding(self, t0: float, t1: float, buffer, tol: float = SPAN_TOLERANCE_S
                            ) -> tuple[Optional[np.ndarray], int]:
        """Embedding of [t0, t1] from the stored windows inside it, plus one new window over
        the tail they do not cover. Returns (embedding or None, windows computed now)."""
        inside = [(a, b, e, w) for a, b, e, w in self.history if a >= t0 - tol and b <= t1 + tol]
        covered_to = max((b for _, b, _, _ in inside), default=t0)
        vecs, weights = [e for _, _, e, _ in inside], [w for _, _, _, w in inside]
        reused = self.pause_reused
        tail = self._tail_window(t0, t1, covered_to, buffer, use_pause=True)
        if tail is not None:
            vecs.append(tail[2])
            weights.append(tail[3])
        emb = _unit(np.average(np.stack(vecs), axis=0, weights=weights)) if vecs else None
        return emb, int(tail is not None and self.pause_reused == reused)


class _ClipAudio:
    """A whole clip read like the audio buffer (times in s from its start)."""

    def __init__(self, wav: np.ndarray):
        self.wav = wav

    def read(self, t0: float, t1: float) -> np.ndarray:
        a, b = (max(0, int(round(t * SAMPLE_RATE))) for t in (t0, t1))
        return self.wav[a:b]


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else v.astype(np.float32)


@dataclass
class SpeakerDecision:
    speaker_id: str
    source: str  # "hint", "enrolled", "cluster", "continued" (PerceptionCore) or ""
    confidence: float
    similarity: float = float("nan")
    new: bool = False


class OnlineDiarizer:
    """Online clustering of utterance embeddings into stable speaker ids."""

    def __init__(self, config: Optional[DiarizationConfig] = None, min_update_s: float = 0.8,
                 prefix: str = "speaker_"):
        """``config``: its thresholds (join, enrolled, merge), ``min_new_speaker_seconds``,
        ``max_speakers`` and ``merge_max_members``; ``min_update_s``: shorter utterances
        never move a centroid; ``prefix``: of the ids it gives."""
        self.config = config or DiarizationConfig()
        self.min_update_s = min_update_s
        self.prefix = prefix
        self.enrolled: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the clusters (not the enrolled people)."""
        self._ids: list[str] = []
        self._sums: list[np.ndarray] = []
        self._counts: list[int] = []
        self._next = 0
        self.overflow = 0
        self.merged: dict[str, str] = {}  # retired id -> the id that continues

    @property
    def n_clusters(self) -> int:
        return len(self._ids)

    def enroll(self, name: str, embedding: np.ndarray) -> None:
        self.enrolled[name] = _unit(np.asarray(embedding, np.float32))

    def _merge_into_older(self, k: int) -> None:
        """When two speakers' centroids have become near-identical (one person split in
        two early on, e.g. by an atypical first utterance), later utterances go to the
        older id only. Published ids are never changed; the younger id is retired."""
        if len(self._ids) < 2:
            return
        c = self._centroids()
        sims = c @ c[k]
        sims[k] = -1
        # Only a small cluster is folded into another: the centroids of two well-populated
        # speakers converge too (averaging keeps what all voices share: channel, language).
        small = np.array([min(self._counts[k], n) <= self.config.merge_max_members
                          for n in self._counts])
        sims[~small] = -1
        j = int(np.argmax(sims))
        if sims[j] < self.config.merge_threshold:
            return
        old, young = (j, k) if j < k else (k, j)  # lists are in creation order
        self.merged[self._ids[young]] = self._ids[old]
        while len(self.merged) > 256:  # a record for diagnostics, bounded
            self.merged.pop(next(iter(self.merged)))
        self._sums[old] = self._sums[old] + self._sums[young]
        self._counts[old] += self._counts[young]
        for lst in (self._ids, self._sums, self._counts):
            del lst[young]

    def _centroids(self) -> np.ndarray:
        return np.stack([_unit(s) for s in self._sums]) if self._sums else np.zeros((0, 1))

    def assign(self, embedding: Optional[np.ndarray], duration: float,
               hint: str = "") -> SpeakerDecision:
        if hint:
            return SpeakerDecision(hint, "hint", 1.0)
        if embedding is None:
            return SpeakerDecision("", "", float("nan"))
        e = _unit(np.asarray(embedding, np.float32))
        if self.enrolled:
            names = list(self.enrolled)
            sims = np.stack([self.enrolled[n] for n in names]) @ e
            k = int(np.argmax(sims))
            if sims[k] >= self.config.enroll_threshold:
                return SpeakerDecision(names[k], "enrolled",
                                       _conf(sims[k], self.config.enroll_threshold),
                                       float(sims[k]))
        if self._ids:
            sims = self._centroids() @ e
            k = int(np.argmax(sims))
            best = float(sims[k])
        else:
            k, best = -1, -1.0
        trusted = duration >= self.config.min_new_speaker_seconds
        if k >= 0 and best >= self.config.threshold:
            sid = self._ids[k]
            if duration >= self.min_update_s:
                self._sums[k] = self._sums[k] + e
                self._counts[k] += 1
                self._merge_into_older(k)
            return SpeakerDecision(sid, "cluster", _conf(best, self.config.threshold), best)
        if k < 0 or (trusted and len(self._ids) < self.config.max_speakers):
            sid = f"{self.prefix}{self._next}"
            self._next += 1
            self._ids.append(sid)
            self._sums.append(e.copy())
            self._counts.append(1)
            return SpeakerDecision(sid, "cluster", 0.5, best, new=True)
        if trusted:
            self.overflow += 1
        # Too short to found a speaker, or no room: the nearest one, with low confidence.
        return SpeakerDecision(self._ids[k], "cluster", 0.25 * _conf(best, 0.0), best)


#: ``diarization.voices``: samples enrolled at most (a household, not a crowd), and the
#: largest file read (a minute of 48 kHz stereo float is 23 MB).
MAX_VOICES = 64
MAX_VOICE_BYTES = 32_000_000
#: Embeddings of enrolled samples by (file, size, mtime, embedder window and step): a core
#: started again in this process (a lifecycle configure, a benchmark's core per dialogue)
#: reads and embeds each sample once (~0.3 s for 6 s of speech).
_VOICE_EMBEDDINGS: dict[tuple, np.ndarray] = {}


def enroll_voices(folder: Path, embedder: SpeakerEmbedder, diarizer: OnlineDiarizer,
                  enroll: Callable[[str, np.ndarray], None]) -> None:
    """``diarization.voices``: each ``<name>.wav`` of ``folder`` enrolled as ``name`` into
    ``diarizer`` (``enroll(name, audio16k)``: the core's enrolment of one sample, which
    refuses one shorter than 1 s with an InputError). Raises ValueError, naming the file,
    for a folder without samples or with more than :data:`MAX_VOICES`, a file that is not
    a regular file, is larger than :data:`MAX_VOICE_BYTES`, is not WAV audio or holds NaN
    or infinite samples, or a sample shorter than 1 s."""
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"diarization.voices: {folder} is not a folder of <name>.wav "
                         "voice samples")
    if len(files) > MAX_VOICES:
        raise ValueError(f"diarization.voices: {folder} holds {len(files)} samples; at "
                         f"most {MAX_VOICES} are enrolled")
    for f in files:
        if not f.is_file():
            raise ValueError(f"diarization.voices: {f} is not a regular file")
        st = f.stat()
        if st.st_size > MAX_VOICE_BYTES:
            raise ValueError(f"diarization.voices: {f} is {st.st_size / 1e6:.0f} MB; "
                             f"a voice sample is at most {MAX_VOICE_BYTES / 1e6:.0f} MB")
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns, embedder.window, embedder.step)
        if key in _VOICE_EMBEDDINGS:
            diarizer.enroll(f.stem, _VOICE_EMBEDDINGS[key])
            continue
        try:
            audio = read_wav_16k(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"diarization.voices: {f} is not WAV audio ({e})") from e
        if not np.isfinite(audio).all():
            raise ValueError(f"diarization.voices: {f} holds NaN or infinite samples")
        try:
            enroll(f.stem, audio)
        except InputError as e:
            raise ValueError(f"diarization.voices: {f}: {e}") from e
        while len(_VOICE_EMBEDDINGS) >= 4 * MAX_VOICES:  # bounded: oldest out
            _VOICE_EMBEDDINGS.pop(next(iter(_VOICE_EMBEDDINGS)))
        _VOICE_EMBEDDINGS[key] = diarizer.enrolled[f.stem]


def _conf(sim: float, threshold: float) -> float:
    """Similarity -> confidence in [0, 1]: 0.5 at the threshold, 1 at identity."""
    sim = float(sim)
    if sim >= threshold:
        return float(min(1.0, 0.5 + 0.5 * (sim - threshold) / max(1e-6, 1 - threshold)))
    return float(max(0.0, 0.5 * (sim + 1) / (threshold + 1)))


#: Where a recognized segment may change speaker: after a word that ends a sentence.
SENTENCE_END = (".", "?", "!")


def word_boundary(words, i: int) -> float:
    """The time between ``words[i - 1]`` and ``words[i]`` (the middle of the gap)."""
    return 0.5 * (words[i - 1].end + words[i].start)


def speaker_changes(words, read: Callable[[float, float], np.ndarray],
                    embed: Callable[[list], np.ndarray], threshold: float,
                    window_s: float = 1.6, min_side_s: float = 0.5,
                    min_piece_s: float = 0.5) -> list[int]:
    """Where a new speaker takes over inside one recognized segment: the indices ``i`` of
    ``words`` (each with ``word``, ``start``, ``end``) at which a piece starts, ascending.

    Voice activity cannot cut a turn that follows another within a few hundred ms (natural
    turn-taking: half the gaps are under 0.2 s, a quarter overlap), so one segment often holds
    several people's turns. Every sentence end inside it (a word ending in ``.``, ``?`` or
    ``!``, followed by more words) is a candidate: the speech on each side of the boundary,
    at most ``window_s`` of it and at least ``min_side_s``, is embedded (``embed``: a batch of
    windows -> unit vectors) and a cosine similarity below ``threshold`` is a change. The most
    dissimilar changes are taken first; one closer than ``min_piece_s`` to a change already
    taken is dropped. ``read(t0, t1)`` returns the audio. Other word boundaries are not
    judged: there the sides' similarity does not separate speakers (docs/perception.md)."""
    n = len(words)
    if n < 2:
        return []
    seg0, seg1 = words[0].start, words[-1].end
    cands, wavs = [], []
    for i in range(1, n):
        if not words[i - 1].word.endswith(SENTENCE_END):
            continue
        b = word_boundary(words, i)
        if b - seg0 < min_side_s or seg1 - b < min_side_s:
            continue
        left, right = read(max(seg0, b - window_s), b), read(b, min(seg1, b + window_s))
        if left.size == 0 or right.size == 0:
            continue
        cands.append((i, b))
        wavs += [left, right]
    if not cands:
        return []
    e = embed(wavs)
    sims = np.einsum("ij,ij->i", e[0::2], e[1::2])
    chosen: list[tuple[int, float]] = []
    for k in np.argsort(sims):
        if sims[k] >= threshold:
            break
        i, b = cands[k]
        if all(abs(b - c) >= min_piece_s for _, c in chosen):
            chosen.append((i, b))
    return sorted(i for i, _ in chosen)
