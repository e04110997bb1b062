"""`python -m erc_ros make-bag`: a generated conversation -> a labelled rosbag2.

The conversation comes from the perception core's generator
(:mod:`erc_ros.synth.conversation`: speech synthesised with espeak-ng or, ``--voices
kokoro``, natural voices (:mod:`erc_ros.synth.voices`); ``--timing natural``: gaps, overlaps
and back-channels as in conversation; ``--room``: a microphone in a room
(:mod:`erc_ros.synth.room`); speakers' faces; ground-truth turns with MELD emotion labels).
The bag holds what a robot would record:

| topic | type | rate |
|---|---|---|
| ``/audio`` | audio_common_msgs/AudioDataStamped (S16LE mono 16 kHz) | 10 chunks/s |
| ``/audio_info`` | audio_common_msgs/AudioInfo | once a second |
| ``/camera/image_raw/compressed`` | sensor_msgs/CompressedImage (jpeg) | ``--fps`` |
| ``/erc_ros/transcript`` | erc_ros/Transcript (a partial mid-turn, the final after the turn; left out by ``--no-transcripts``) | per turn |
| ``/erc_ros/ground_truth`` | std_msgs/String (JSON of the turn: id, span, speaker, label) | per turn |

and ``labels.csv`` inside the bag folder (utterance_id,start,end,speaker,text,label), which
``eval-bag`` finds by itself. Record times are arrival times: a chunk is recorded when its
last sample exists, a final transcript ``--asr-delay`` after the turn ends.

    python -m erc_ros make-bag --minutes 30 --out /tmp/conv30     # one command, 30 minutes
    python -m erc_ros make-bag --script data/demo_script.txt --out data/demo_bag
    python -m erc_ros make-bag --minutes 30 --no-transcripts --out /tmp/conv30_mic  # no ASR
    python -m erc_ros make-bag --minutes 5 --voices kokoro --timing natural --room --snr 15 \
        --out /tmp/conv5_room     # natural voices, real turn-taking, far-field (voices extra)
"""
from __future__ import annotations

import csv
import heapq
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from erc_ros.bags.bagio import make_typestore, ros_type_name
from erc_ros.core.types import SAMPLE_RATE, AudioFormat, TranscriptEvent
from erc_ros.paths import data_root
from erc_ros.ros import convert
from erc_ros.synth import conversation as gen
from erc_ros.synth.conversation import add_voice_arguments
from erc_ros.synth.voices import VoicesMissing

TOPICS = {"audio": "/audio", "audio_info": "/audio_info",
          "image": "/camera/image_raw/compressed", "transcript": "/erc_ros/transcript",
          "ground_truth": "/erc_ros/ground_truth"}

#: Bag time of the conversation's t=0 (sim time must not start at 0: 0 means "unset").
T0 = 100.0


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def turns_of(conv: Any) -> list[dict]:
    """Ground-truth turns of a generated conversation as plain dicts."""
    out = []
    for i, t in enumerate(_get(conv, "turns", "utterances")):
        out.append({
            "utterance_id": str(_get(t, "utterance_id", "id", default=f"t{i:05d}")),
            "start": float(_get(t, "start")), "end": float(_get(t, "end")),
            "speaker": str(_get(t, "speaker", "speaker_id", default="")),
            "text": str(_get(t, "text", default="")),
            "label": str(_get(t, "emotion", "label", default="")),
        })
    return out


def frame_source(conv: Any):
    """A function t -> RGB frame (or None) for the conversation's camera."""
    fn = _get(conv, "frame_at", "frame")
    if callable(fn):
        return fn
    frames = _get(conv, "frames", default=None)
    if frames:
        stamps = np.asarray([float(_get(f, "stamp", "t", default=f[0] if isinstance(
            f, tuple) else 0.0)) for f in frames])

        def at(t: float):
            i = int(np.clip(np.searchsorted(stamps, t, side="right") - 1, 0, len(frames) - 1))
            f = frames[i]
            return f[1] if isinstance(f, tuple) else _get(f, "image")
        return at
    return lambda t: None


def bag_messages(conv: Any, fps: float = 5.0, chunk_s: float = 0.1, asr_delay: float = 0.15,
                 jpeg_quality: int = 80, t0: float = T0,
                 transcripts: bool = True) -> Iterator[tuple[str, float, Any]]:
    """(topic, record time, rclpy message) in record-time order; ``transcripts=False``
    leaves the ASR topic out (a robot with a camera and a microphone only)."""

    from std_msgs.msg import String

    audio = np.asarray(_get(conv, "audio"), np.float32)
    sr = int(_get(conv, "sample_rate", default=SAMPLE_RATE))
    if sr != SAMPLE_RATE:
        raise ValueError(f"generated audio at {sr} Hz, expected {SAMPLE_RATE}")
    pcm = np.clip(np.rint(audio * 32767), -32768, 32767).astype("<i2")
    duration = len(pcm) / sr
    turns = turns_of(conv)
    frame_at = frame_source(conv)
    events: list[tuple[float, int, str, Any]] = []
    seq = 0

    def add(t, topic, msg):
        nonlocal seq
        events.append((t, seq, topic, msg))
        seq += 1

    info = convert.audio_info_msg(AudioFormat())
    for s in np.arange(0.0, duration, 1.0):
        add(t0 + s, TOPICS["audio_info"], info)
    n = int(round(chunk_s * sr))
    for i in range(0, len(pcm), n):
        add(t0 + (i + min(n, len(pcm) - i)) / sr, TOPICS["audio"],
            convert.pcm16_to_audio_msg(pcm[i:i + n], t0 + i / sr, "mic"))
    if fps > 0:
        for k in range(int(duration * fps)):
            t = k / fps
            img = frame_at(t)
            if img is not None:
                add(t0 + t + 0.01, TOPICS["image"],
                    convert.rgb_to_compressed(img, t0 + t, "camera", "jpeg", jpeg_quality))
    for turn in turns:
        s, e = t0 + turn["start"], t0 + turn["end"]
        words = turn["text"].split()
        fin = e + asr_delay
        if transcripts:
            if len(words) > 1:
                mid = (s + e) / 2
                add(mid, TOPICS["transcript"], convert.event_to_transcript(TranscriptEvent(
                    stamp=mid, text=" ".join(words[:len(words) // 2]), is_final=False,
                    start=s, end=mid, segment_id=turn["utterance_id"], locale="en_US")))
            add(fin, TOPICS["transcript"], convert.event_to_transcript(TranscriptEvent(
                stamp=fin, text=turn["text"], is_final=True, start=s, end=e, confidence=0.9,
                segment_id=turn["utterance_id"], locale="en_US")))
        add(fin, TOPICS["ground_truth"], String(data=json.dumps(
            {**turn, "start": s, "end": e})))
    heapq.heapify(events)
    while events:
        t, _, topic, msg = heapq.heappop(events)
        yield topic, t, msg


def write_bag(messages, out: Path, storage: str = "mcap") -> int:
    """Write (topic, time s, rclpy message) to a new rosbag2; returns the message count."""
    from rclpy.serialization import serialize_message

    store = make_typestore()
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    count = 0
    with Writer(out, version=9, storage_plugin=plugin) as writer:
        conns: dict[str, Any] = {}
        for topic, t, msg in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, ros_type_name(msg), typestore=store)
            writer.write(conns[topic], convert.float_to_ns(t), serialize_message(msg))
            count += 1
    return count


def write_labels(turns: list[dict], path: Path, t0: float = T0) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["utterance_id", "start", "end", "speaker", "text", "label"])
        w.writeheader()
        for t in turns:
            w.writerow({**t, "start": f"{t0 + t['start']:.6f}", "end": f"{t0 + t['end']:.6f}"})


def generate(minutes: Optional[float] = None, script: Optional[str] = None,
             meld_csv: Optional[str] = None, seed: int = 0, voice_args=None) -> Any:
    """A conversation from the perception core's generator (voices, faces, labels).

    ``script``: a ``Name [emotion]: text`` file. Else MELD dialogues (``meld_csv``, default
    the MELD dev CSV) in order, until about ``minutes`` of speech (all of them if None).
    ``voice_args``: parsed :func:`~erc_ros.synth.conversation.add_voice_arguments`
    (default espeak-ng voices, clean pauses, no room).
    """

    def options(lines) -> dict:
        return gen.voice_options(voice_args, lines) if voice_args is not None else {}

    if script:
        lines = gen.parse_script(Path(script).read_text())
        return gen.build(lines, seed=seed, name=Path(script).stem, **options(lines))
    csv_path = Path(meld_csv) if meld_csv else data_root() / "meld" / "dev_sent_emo.csv"
    if not csv_path.is_file():
        if meld_csv:
            raise FileNotFoundError(f"no MELD-format CSV at {csv_path}")
        # No MELD data here (a colcon install without ERC_ROS_DATA): the built-in script.
        print(f"make-bag: MELD dev is not at {csv_path} (set ERC_ROS_DATA to the folder "
              f"holding meld/dev_sent_emo.csv for MELD dialogues); using the built-in "
              f"3-speaker script", file=sys.stderr)
        lines = gen.default_script_lines(60.0 * (minutes or 1.0), seed)
        return gen.build(lines, seed=seed, name="three_speaker", **options(lines))
    dialogues = gen.read_meld(csv_path)
    target = None if minutes is None else minutes * 60

    def dialogue(i: int) -> list:
        # Past the end of the CSV (long soaks), dialogues come round again, ids suffixed.
        d = dialogues[i % len(dialogues)]
        k = i // len(dialogues)
        return d if k == 0 else [gen.ScriptLine(x.speaker, x.text, x.emotion,
                                                f"{x.utterance_id}_r{k}") for x in d]

    def seconds(d) -> float:
        return sum(0.32 * len(x.text.split()) + 0.85 for x in d)

    lines: list = []
    used = 0
    est = 0.0
    while (target is None and used < len(dialogues)) or (target is not None and est < target):
        d = dialogue(used)
        lines += d
        est += seconds(d)
        used += 1
    conv = gen.build(lines, seed=seed, name=csv_path.stem, **options(lines))
    # The estimate is rough; add dialogues until long enough (speech is cached).
    while target is not None and conv.duration < 0.97 * target:
        short = target - conv.duration
        while short > 0:
            d = dialogue(used)
            lines += d
            short -= seconds(d)
            used += 1
        conv = gen.build(lines, seed=seed, name=csv_path.stem, **options(lines))
    return conv


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="bag folder to create (must not exist)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--minutes", type=float, default=None,
                     help="generate a conversation of about this length (MELD dialogues)")
    src.add_argument("--script", default=None, help="a text script (see conversation_gen)")
    src.add_argument("--meld-csv", default=None, help="a MELD-format CSV")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=5.0, help="camera frames per second")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--jpeg-quality", type=int, default=80)
    p.add_argument("--no-transcripts", action="store_true",
                   help="leave the ASR topic out: camera, microphone (and the labels) only; "
                        "score it with eval-bag --asr embedded")
    add_voice_arguments(p)


def run(args) -> int:
    out = Path(args.out)
    if out.exists():
        print(f"make-bag: {out} exists; remove it first", file=sys.stderr)
        return 2
    t = time.perf_counter()
    minutes = args.minutes if (args.minutes or args.script or args.meld_csv) else 1.0
    try:
        conv = generate(minutes, args.script, args.meld_csv, args.seed, voice_args=args)
    except (VoicesMissing, FileNotFoundError) as e:
        print(f"make-bag: {e}", file=sys.stderr)
        return 2
    t_gen = time.perf_counter() - t
    turns = turns_of(conv)
    msgs = bag_messages(conv, fps=args.fps, jpeg_quality=args.jpeg_quality,
                        transcripts=not args.no_transcripts)
    n = write_bag(tqdm(msgs, desc="writing bag", unit="msg", mininterval=1.0), out,
                  args.storage)
    write_labels(turns, out / "labels.csv")
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    dur = len(np.asarray(_get(conv, "audio"))) / SAMPLE_RATE
    print(f"make-bag: {out}  {dur / 60:.1f} min, {len(turns)} turns, "
          f"{len({t['speaker'] for t in turns})} speakers, {n} messages, {size:.1f} MB "
          f"(generated in {t_gen:.0f} s, total {time.perf_counter() - t:.0f} s)")
    return 0
