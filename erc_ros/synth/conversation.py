"""Synthesize multi-speaker conversations with exact ground truth (tests, benchmarks, demo).

From a text script (``Name: text`` or ``Name [emotion]: text`` lines) or a MELD-format CSV
(its dialogues, with their real emotion labels), each turn is spoken by espeak-ng with a
voice per speaker (voice variant, pitch and speed differ), resampled 22.05 -> 16 kHz with
``resample_poly(320, 441)``, trimmed to its voiced part and laid on a timeline with pauses
between turns; the ground truth (start/end/speaker/text/emotion/utterance id) is exact to
the sample. :func:`real_two_speaker` builds the same from real recordings: Debian's
asterisk prompt packages (en = one speaker, fr = another; 8 kHz, up-sampled 2/1), fetched
with ``apt-get download`` into a cache on first use, never committed.

Video: every speaker has a face (real faces from scikit-image's LFW subset) placed side by
side in a 640x480 frame; :meth:`GeneratedConversation.frame_at` renders the frame at time
``t`` with the current speaker's mouth opening with the loudness of their voice, so
audio-visual speaker selection is testable. ``save(folder)`` writes ``audio.wav`` (16-bit,
16 kHz), ``conversation.json`` and ``faces/<speaker>.png``; ``load(folder)`` reads it back.

CLI: ``python -m erc_ros gen-conversation --script FILE|--meld CSV --out DIR``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from erc_ros.datasets.meld import load_meld
from erc_ros.models.labels import MELD_LABELS
from erc_ros.synth.faces import MOUTH_Y, face_image
from erc_ros.synth.room import NOISES, Room, render
from erc_ros.synth.speech import (SAMPLE_RATE, cache_dir, espeak, read_wav, to_16k, trim, voice_for,
                                  write_wav)
from erc_ros.synth.voices import speech_for


@dataclass
class Turn:
    start: float
    end: float
    speaker: str
    text: str = ""
    emotion: str = ""
    utterance_id: str = ""
    kind: str = "turn"  #: "turn" (a line of the script) or "backchannel" (unlabelled)


@dataclass
class GeneratedConversation:
    audio: np.ndarray
    sample_rate: int
    turns: list[Turn]
    faces: dict[str, np.ndarray] = field(default_factory=dict)  # speaker -> RGB face
    width: int = 640
    height: int = 480
    name: str = "conversation"

    @property
    def duration(self) -> float:
        return self.audio.size / self.sample_rate

    @property
    def speakers(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.turns:
            seen.setdefault(t.speaker, None)
        return list(seen)

    def speaker_at(self, t: float) -> Optional[str]:
        for turn in self.turns:
            if turn.start <= t < turn.end:
                return turn.speaker
        return None

    # -- video -------------------------------------------------------------------------
    def _layout(self) -> dict[str, tuple[int, int, int]]:
        """speaker -> (x, y, size) of the face in the frame; at most 4 faces in view."""
        spk = [s for s in self.speakers if s in self.faces][:4]
        n = max(1, len(spk))
        size = int(min(self.height * 0.35, 0.9 * self.width / (n + 1)))
        xs = [(i + 1) * self.width / (n + 1) - size / 2 for i in range(n)]
        y = int(self.height * 0.3)
        return {s: (int(x), y, size) for s, x in zip(spk, xs)}

    def _base(self):
        if getattr(self, "_base_cache", None) is None:
            import cv2

            rng = np.random.default_rng(0)
            yy = np.linspace(90, 150, self.height, dtype=np.float32)[:, None, None]
            bg = np.broadcast_to(yy, (self.height, self.width, 3)).copy()
            bg += rng.normal(0, 4, bg.shape).astype(np.float32)
            base = np.clip(bg, 0, 255).astype(np.uint8)
            layout = self._layout()
            for s, (x, y, size) in layout.items():
                f = cv2.resize(self.faces[s], (size, size), interpolation=cv2.INTER_AREA)
                base[y:y + size, x:x + size] = f
            noise = [rng.integers(-3, 4, (self.height, self.width, 1), dtype=np.int16)
                     for _ in range(4)]
            env = np.sqrt(np.convolve(self.audio ** 2, np.ones(640) / 640, mode="same"))
            self._base_cache = (base, layout, noise, env / (env.max() + 1e-9))
        return self._base_cache

    def frame_at(self, t: float) -> np.ndarray:
        """The 640x480 RGB camera frame at time ``t``: faces side by side, the speaker's
        mouth opening with their voice's loudness, light sensor noise."""
        import cv2

        base, layout, noise, env = self._base()
        img = base.copy()
        spk = self.speaker_at(t)
        if spk in layout:
            x, y, size = layout[spk]
            i = int(np.clip(t * self.sample_rate, 0, env.size - 1))
            opening = float(np.clip(env[i] * 2.5, 0, 1))
            if opening > 0.05:  # a dark, soft-edged, half-transparent opening of the lips
                cx, cy = x + size // 2, y + int(MOUTH_Y * size)
                x0, y0 = cx - int(0.12 * size), cy - int(0.06 * size)
                patch = img[y0:cy + int(0.06 * size) + 1, x0:cx + int(0.12 * size) + 1]
                mask = np.zeros(patch.shape[:2], np.float32)
                cv2.ellipse(mask, (cx - x0, cy - y0),
                            (int(0.08 * size), max(1, int(0.04 * size * opening))),
                            0, 0, 360, 0.55, -1)
                mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[:, :, None]
                dark = np.array([80, 35, 35], np.float32)[None, None, :]
                patch[:] = np.clip(patch * (1 - mask) + dark * mask, 0, 255).astype(np.uint8)
        k = int(t * 15) % len(noise)
        return np.clip(img.astype(np.int16) + noise[k], 0, 255).astype(np.uint8)

    def frames(self, fps: float = 15.0, t0: float = 0.0,
               t1: Optional[float] = None) -> Iterator[tuple[float, np.ndarray]]:
        t1 = self.duration if t1 is None else t1
        for i in range(int(np.floor((t1 - t0) * fps)) + 1):
            t = t0 + i / fps
            yield t, self.frame_at(t)

    # -- files -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        import cv2

        folder = Path(folder)
        (folder / "faces").mkdir(parents=True, exist_ok=True)
        write_wav(folder / "audio.wav", self.audio, self.sample_rate)
        for s, img in self.faces.items():
            cv2.imwrite(str(folder / "faces" / f"{_safe(s)}.png"), img[:, :, ::-1])
        meta = {"name": self.name, "sample_rate": self.sample_rate, "duration": self.duration,
                "width": self.width, "height": self.height,
                "faces": {s: f"faces/{_safe(s)}.png" for s in self.faces},
                "turns": [asdict(t) for t in self.turns]}
        (folder / "conversation.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "GeneratedConversation":
        import cv2

        folder = Path(folder)
        meta = json.loads((folder / "conversation.json").read_text())
        audio, sr = read_wav(folder / "audio.wav")
        faces = {s: cv2.imread(str(folder / p))[:, :, ::-1].copy()
                 for s, p in meta["faces"].items()}
        return cls(audio, sr, [Turn(**t) for t in meta["turns"]], faces, meta["width"],
                   meta["height"], meta.get("name", folder.name))


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "speaker"


# -- building ----------------------------------------------------------------------------
@dataclass
class ScriptLine:
    speaker: str
    text: str
    emotion: str = ""
    utterance_id: str = ""


_LINE = re.compile(r"^\s*([^:\[\]#]+?)\s*(?:\[\s*([A-Za-z]+)\s*\])?\s*:\s*(.+?)\s*$")


def parse_script(text: str) -> list[ScriptLine]:
    """``Name: text`` / ``Name [emotion]: text`` lines; blank lines and ``#`` comments skipped."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"script line {n} is not 'Speaker: text': {line!r}")
        out.append(ScriptLine(m.group(1), m.group(3), (m.group(2) or "").lower(), f"l{n}"))
    return out


#: Typographic characters of MELD's text, spelled as the speech synthesizer (and a
#: simulated ASR) would say and write them.
_SPOKEN = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
                         "\u2026": "..."})


def read_meld(csv_path: str | Path, dialogues: Optional[Sequence[int]] = None,
              max_dialogues: Optional[int] = None) -> list[list[ScriptLine]]:
    """MELD-format CSV -> dialogues (lists of lines in Utterance_ID order) with real labels,
    read by the one MELD loader (:func:`erc_ros.datasets.meld.load_meld`)."""

    out = []
    for dlg in load_meld(csv_path):
        d = int(dlg.conversation_id.rsplit("-", 1)[1])
        if dialogues is not None and d not in dialogues:
            continue
        out.append([ScriptLine(u.speaker_id, u.text.translate(_SPOKEN),
                               MELD_LABELS[y] if y >= 0 else "",
                               f"dia{d}_utt{u.utterance_id.rsplit('-', 1)[1]}")
                    for u, y in zip(dlg.utterances, dlg.labels)])
    return out[:max_dialogues] if max_dialogues else out


@dataclass(frozen=True)
class TurnTaking:
    """How turns follow each other on the timeline.

    ``pauses`` (the classic generator): one clean pause of ``gap`` seconds (uniform) before
    every turn; each turn peak-normalised.

    ``natural``: turn-taking as people do it.

    - Between speakers, the floor-transfer offset (next start minus previous end) is drawn
      from a normal distribution of mean ``fto_mean`` and s.d. ``fto_sd`` seconds: most gaps
      a few hundred ms and about a quarter of the transitions overlapping, as measured in
      conversation corpora (Stivers et al. 2009, PNAS 106(26): English offsets peak at
      0-200 ms; Heldner & Edlund 2010, J. Phonetics 38: gaps and overlaps mostly under 500 ms,
      overlaps a large share of transitions; Levinson & Torreira 2015, Front. Psychol. 6:731:
      mode ~200 ms). An overlap is at most ``max_overlap`` s and ``max_overlap_fraction`` of
      either turn, so the words of both stay audible.
    - The same speaker going on pauses longer (Heldner & Edlund 2010: pauses are longer than
      gaps): lognormal with median ``pause_median`` s.
    - Back-channels: during a turn of at least ``backchannel_min_seconds``, with probability
      ``backchannel_rate``, a listener (the previous speaker, else another one of the
      dialogue) says "yeah", "right", ... over it. They are ground-truth turns of ``kind``
      ``backchannel``, without an emotion label.
    - Loudness: each speaker has a level of their own (RMS ``level_dbfs`` +- ``level_spread_db``).
      Every turn is brought to it, unless ``speaker_gain``: then the speaker's gain is set once,
      by their first turn, and their turns keep the loudness they were recorded with (a
      person at one distance from the microphone, louder when angry: emotional speech keeps
      its loudness, which an expert of the voice reads).
    """

    style: str = "pauses"
    gap: tuple[float, float] = (0.5, 1.2)
    fto_mean: float = 0.2
    fto_sd: float = 0.3
    max_overlap: float = 0.5
    max_overlap_fraction: float = 0.3
    pause_median: float = 0.45
    pause_sigma: float = 0.45
    pause_range: tuple[float, float] = (0.15, 1.5)
    backchannel_rate: float = 0.15
    backchannel_min_seconds: float = 2.0
    level_dbfs: float = -22.0
    level_spread_db: float = 3.0
    speaker_gain: bool = False

    def __post_init__(self):
        if self.style not in ("pauses", "natural"):
            raise ValueError(f"turn-taking style must be 'pauses' or 'natural', got "
                             f"{self.style!r}")


PAUSES = TurnTaking("pauses")
NATURAL = TurnTaking("natural")
#: What listeners say over a turn (plain words Whisper spells one way).
BACKCHANNELS = ("yeah", "right", "okay", "sure", "oh", "really?", "wow", "I see")


def _offsets(timing: TurnTaking, rng, prev_len: float, this_len: float,
             same_speaker: bool) -> float:
    """Seconds from the previous turn's end to this turn's start (negative: overlap)."""
    if timing.style == "pauses":
        return float(rng.uniform(*timing.gap))
    if same_speaker:
        p = timing.pause_median * float(np.exp(timing.pause_sigma * rng.standard_normal()))
        return float(np.clip(p, *timing.pause_range))
    fto = timing.fto_mean + timing.fto_sd * float(rng.standard_normal())
    limit = min(timing.max_overlap, timing.max_overlap_fraction * min(prev_len, this_len))
    return max(fto, -limit)


def build(lines: Sequence[ScriptLine], gap: tuple[float, float] = (0.5, 1.2), seed: int = 0,
          lead: float = 0.8, tail: float = 1.0, cache: Optional[Path] = None,
          speech: Optional[Callable[[ScriptLine, int], np.ndarray]] = None,
          name: str = "conversation", with_faces: bool = True,
          timing: Optional[TurnTaking] = None, room=None) -> GeneratedConversation:
    """Lay the spoken lines on a timeline (``timing``: :class:`TurnTaking`, default clean
    pauses of ``gap`` s); exact ground truth (the dry speech's span of each turn).

    ``speech(line, speaker_index)`` gives a line's 16 kHz audio (default: espeak-ng, a voice
    per speaker). ``room``: a :class:`erc_ros.synth.room.Room` (far-field microphone:
    each speaker's speech convolved with their own impulse response, then noise at the
    room's SNR)."""
    timing = timing or TurnTaking("pauses", gap=gap)
    rng = np.random.default_rng(seed)
    order: dict[str, int] = {}
    levels: dict[str, float] = {}
    gains: dict[str, float] = {}

    def say(line: ScriptLine) -> np.ndarray:
        idx = order.setdefault(line.speaker, len(order))
        if speech is None:
            v, p, s = voice_for(idx)
            return trim(espeak(line.text, v, p, s, cache))
        return trim(speech(line, idx))

    def level(x: np.ndarray, speaker: str) -> np.ndarray:
        if timing.style == "pauses":
            return (x / (np.abs(x).max() + 1e-9) * 0.7 * (0.8 + 0.2 * rng.random())
                    ).astype(np.float32)
        if speaker not in levels:
            levels[speaker] = timing.level_dbfs + timing.level_spread_db * float(
                rng.uniform(-1, 1))
        rms = float(np.sqrt(np.mean(x ** 2))) + 1e-9
        gain = 10 ** (levels[speaker] / 20) / rms
        if timing.speaker_gain:
            gain = gains.setdefault(speaker, gain)
        return (x * gain).astype(np.float32)

    placed: list[tuple[int, np.ndarray, Turn]] = []  # (sample offset, audio, turn)
    pos = int(lead * SAMPLE_RATE)
    prev: Optional[Turn] = None
    pause = 0  # "pauses": the samples of the pause after the previous turn (drawn after it)
    speakers_seen: list[str] = []
    for line in lines:
        x = say(line)
        if x.size == 0:
            continue
        x = level(x, line.speaker)
        dur = x.size / SAMPLE_RATE
        if prev is not None and timing.style == "pauses":
            pos = placed_end + pause
        elif prev is not None:
            off = _offsets(timing, rng, prev.end - prev.start, dur,
                           line.speaker == prev.speaker)
            pos = max(int(round((prev.end + off) * SAMPLE_RATE)),
                      int(round(prev.start * SAMPLE_RATE)) + 1)
        turn = Turn(pos / SAMPLE_RATE, (pos + x.size) / SAMPLE_RATE, line.speaker, line.text,
                    line.emotion, line.utterance_id)
        placed.append((pos, x, turn))
        placed_end = pos + x.size
        if timing.style == "pauses":
            pause = int(_offsets(timing, rng, 0.0, 0.0, False) * SAMPLE_RATE)
        if line.speaker not in speakers_seen:
            speakers_seen.append(line.speaker)
        # a listener's back-channel over a long enough turn
        if timing.style == "natural" and dur >= timing.backchannel_min_seconds and \
                len(speakers_seen) > 1 and rng.random() < timing.backchannel_rate:
            others = [s for s in speakers_seen if s != line.speaker]
            who = prev.speaker if prev is not None and prev.speaker != line.speaker else \
                others[int(rng.integers(len(others)))]
            bc_line = ScriptLine(who, BACKCHANNELS[int(rng.integers(len(BACKCHANNELS)))], "",
                                 f"{line.utterance_id}_bc")
            b = say(bc_line)
            if b.size:
                b = level(b, who)
                at = pos + int(rng.uniform(0.35, 0.7) * x.size)
                at = min(at, pos + x.size - b.size) if b.size < x.size else pos
                placed.append((at, b, Turn(at / SAMPLE_RATE, (at + b.size) / SAMPLE_RATE, who,
                                           bc_line.text, "", bc_line.utterance_id,
                                           kind="backchannel")))
        prev = turn
    total = max((o + x.size for o, x, _ in placed), default=pos) + int(tail * SAMPLE_RATE)
    if timing.style == "pauses" and placed:
        total += pause  # the pause after the last turn, as ever
    if room is not None:
        audio = render(room, [(o, x, t.speaker) for o, x, t in placed], total, seed)
    else:
        audio = np.zeros(total, np.float32)
        for o, x, _ in placed:
            audio[o:o + x.size] += x
    if timing.style == "pauses" and room is None:
        audio = np.clip(audio, -1, 1)
    else:  # mixed or reverberant audio: keep the headroom
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        if peak > 0.98:
            audio = audio * (0.98 / peak)
    turns = sorted((t for _, _, t in placed), key=lambda t: (t.start, t.end))
    faces = {s: face_image(i) for s, i in order.items()} if with_faces else {}
    return GeneratedConversation(audio.astype(np.float32), SAMPLE_RATE, turns, faces, name=name)


DEFAULT_SCRIPT = [
    ("Alice", "neutral", "Good morning, did you sleep well last night?"),
    ("Bob", "joy", "Yes, very well, thank you. I had a wonderful dream about the sea."),
    ("Carol", "surprise", "Really? I never remember my dreams at all."),
    ("Alice", "neutral", "Shall we start with the plan for today, then?"),
    ("Bob", "anger", "I told you yesterday that the meeting was cancelled, and nobody listened."),
    ("Carol", "sadness", "I am sorry, I missed the message completely."),
    ("Alice", "joy", "No problem at all. We have the whole afternoon free now."),
    ("Bob", "neutral", "Then let us go for a walk in the park near the river."),
    ("Carol", "fear", "Is it safe there after dark? I heard some stories."),
    ("Alice", "neutral", "It is fine, there are lights along the whole path."),
    ("Bob", "joy", "Great, I will bring some coffee for everyone."),
    ("Carol", "neutral", "And I will bring the small blue umbrella, just in case."),
]


def default_script_lines(min_duration: float = 120.0, seed: int = 0) -> list[ScriptLine]:
    """The default 3-speaker script (:data:`DEFAULT_SCRIPT`), repeated with shuffled line
    order until about ``min_duration`` seconds of speech."""
    rng = np.random.default_rng(seed)
    lines: list[ScriptLine] = []
    dur = 0.0
    k = 0
    while dur < min_duration:
        block = list(DEFAULT_SCRIPT)
        if k:
            perm = rng.permutation(len(block))
            block = [block[i] for i in perm]
        for s, e, t in block:
            lines.append(ScriptLine(s, t, e, f"s{len(lines)}"))
            dur += 0.4 * len(t.split()) + 0.85
        k += 1
    return lines


def three_speaker(min_duration: float = 120.0, seed: int = 0, cache: Optional[Path] = None,
                  **kw) -> GeneratedConversation:
    """A 3-speaker conversation of at least ``min_duration`` seconds (the default script,
    repeated with shuffled line order as needed; espeak-ng unless ``kw`` says otherwise)."""
    lines = default_script_lines(min_duration, seed)
    conv = build(lines, seed=seed, cache=cache, name="three_speaker", **kw)
    while conv.duration < min_duration:  # rare: the word-count estimate was short
        lines += lines[:6]
        conv = build(lines, seed=seed, cache=cache, name="three_speaker", **kw)
    return conv


# -- real recordings -----------------------------------------------------------------------
ASTERISK_PACKAGES = {"en": "asterisk-core-sounds-en-wav", "fr": "asterisk-core-sounds-fr-wav"}


def debian_package(pkg: str, cache: Optional[Path] = None) -> Path:
    """Download (once) and unpack the Debian package ``pkg`` without root (``apt-get
    download`` + ``dpkg-deb -x``, unpacked aside and renamed into place); its root folder
    in the cache."""
    cache = Path(cache) if cache else cache_dir("asterisk")
    root = cache / "x" / pkg
    if root.is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    dl = Path(tempfile.mkdtemp(dir=cache))
    try:
        r = subprocess.run(["apt-get", "download", pkg], cwd=dl, capture_output=True, text=True)
        debs = list(dl.glob(f"{pkg}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {pkg} failed: {r.stderr.strip()[-300:]}")
        tmp = Path(tempfile.mkdtemp(dir=cache))
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], check=True,
                       capture_output=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, root)
        except OSError:  # another process unpacked it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(dl, ignore_errors=True)
    return root


def fetch_asterisk(cache: Optional[Path] = None) -> dict[str, Path]:
    """Debian's asterisk prompt packages (downloaded once); language -> folder of 8 kHz WAV
    prompts (en: one speaker, fr: another). Needs apt-get and dpkg-deb."""
    out = {}
    for lang, pkg in ASTERISK_PACKAGES.items():
        found = sorted(debian_package(pkg, cache).glob("usr/share/asterisk/sounds/*/"))
        if not found:
            raise RuntimeError(f"{pkg} holds no usr/share/asterisk/sounds/<voice>/")
        out[lang] = found[0]
    return out


def fetch_asterisk_text(lang: str = "en", cache: Optional[Path] = None) -> Path:
    """Debian's ``asterisk-core-sounds-<lang>`` (the prompts' transcripts, downloaded once):
    the path of its ``core-sounds-<lang>.txt.gz`` (``name: text`` lines, the names those of
    :func:`fetch_asterisk`'s WAVs without ``.wav``)."""
    pkg = f"asterisk-core-sounds-{lang}"
    pattern = f"usr/share/doc/{pkg}/core-sounds-{lang}.txt.gz"
    found = list(debian_package(pkg, cache).glob(pattern))
    if not found:
        raise RuntimeError(f"{pkg} holds no {pattern}")
    return found[0]


def real_two_speaker(n_turns: int = 30, seed: int = 0, cache: Optional[Path] = None,
                     min_s: float = 1.5, max_s: float = 6.0, **kw) -> GeneratedConversation:
    """Two real speakers alternating (en prompt voice = ``en_speaker``, fr prompt voice =
    ``fr_speaker``), prompts of ``min_s``..``max_s`` seconds chosen at random."""
    dirs = fetch_asterisk(cache)
    rng = np.random.default_rng(seed)
    pools = {}
    for lang, d in dirs.items():
        files = sorted(d.glob("*.wav"))
        rng.shuffle(files)
        pool = []
        for f in files:
            x, sr = read_wav(f)
            x = trim(to_16k(x, sr), rel=0.05)
            if min_s <= x.size / SAMPLE_RATE <= max_s:
                pool.append((f.stem, x))
            if len(pool) >= n_turns:
                break
        pools[lang] = pool
    lines, clips = [], {}
    for i in range(n_turns):
        lang = "en" if i % 2 == 0 or rng.random() < 0.2 else "fr"
        stem, x = pools[lang][i % len(pools[lang])]
        uid = f"{lang}_{i}"
        clips[uid] = x
        lines.append(ScriptLine(f"{lang}_speaker", stem.replace("-", " "), "", uid))
    return build(lines, seed=seed, speech=lambda line, _: clips[line.utterance_id],
                 name="real_two_speaker", **kw)


# -- CLI ---------------------------------------------------------------------------------------
def add_voice_arguments(p, voices: str = "espeak", timing: str = "pauses") -> None:
    """How a generated conversation sounds: --voices, --timing, --room (+ its settings)."""

    r = Room()
    p.add_argument("--voices", choices=["espeak", "kokoro"], default=voices,
                   help="espeak: espeak-ng (robotic, every machine); kokoro: natural voices, "
                        "a distinct one per speaker (the voices extra: make setup-voices; "
                        "MELD dev is shipped spoken)")
    p.add_argument("--timing", choices=["pauses", "natural"], default=timing,
                   help="pauses: a clean pause before every turn; natural: gaps of a few "
                        "hundred ms, short overlaps and back-channels (TurnTaking)")
    p.add_argument("--room", action="store_true",
                   help="a microphone in a room: reverberation per speaker and noise "
                        "(pyroomacoustics, the voices extra)")
    p.add_argument("--rt60", type=float, default=r.rt60, help="with --room: reverberation s")
    p.add_argument("--snr", type=float, default=r.snr_db, help="with --room: speech to noise, dB")
    p.add_argument("--noise", choices=NOISES, default=r.noise, help="with --room: noise kind")


def voice_options(args, lines) -> dict:
    """``build`` keyword arguments (speech, timing, room) from :func:`add_voice_arguments`."""

    out: dict = {"timing": NATURAL if args.timing == "natural" else PAUSES}
    if args.voices == "kokoro":
        out["speech"] = speech_for(lines, "kokoro")
    if args.room:
        out["room"] = Room(rt60=args.rt60, snr_db=args.snr, noise=args.noise)
    return out


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--script", help="text script: 'Speaker [emotion]: text' per line")
    src.add_argument("--meld", help="MELD-format CSV; its dialogues become conversations")
    src.add_argument("--real", action="store_true",
                     help="two real speakers from Debian's asterisk prompts")
    p.add_argument("--dialogue", type=int, action="append",
                   help="MELD Dialogue_ID to use (repeatable; default: the first)")
    p.add_argument("--minutes", type=float, default=2.0,
                   help="default 3-speaker script: at least this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (WAV + JSON + PNG faces)")
    add_voice_arguments(p)


def run(args) -> int:
    if args.script:
        lines = parse_script(Path(args.script).read_text())
        conv = build(lines, seed=args.seed, name=Path(args.script).stem,
                     **voice_options(args, lines))
    elif args.meld:
        dias = read_meld(args.meld, dialogues=args.dialogue, max_dialogues=None if args.dialogue
                         else 1)
        lines = [line for d in dias for line in d]
        conv = build(lines, seed=args.seed, name=Path(args.meld).stem,
                     **voice_options(args, lines))
    elif args.real:
        conv = real_two_speaker(seed=args.seed)
    else:
        conv = three_speaker(args.minutes * 60, seed=args.seed)
    conv.save(args.out)
    print(f"{args.out}: {conv.duration:.1f} s, {len(conv.turns)} turns, speakers "
          f"{', '.join(conv.speakers)}")
    return 0
