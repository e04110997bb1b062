"""The eval-bag HTML report (erc_ros/evaluation/report.py): (a) the page built from a hand-made
result (a <script> in a text, a lost turn, an unlabelled estimate, a failed bag) is
self-contained and escapes its texts; (b) in headless Chromium with every network request
refused, it renders its charts, filters its timeline and table, and plays its clips without
a console error; (c) end to end, from a generated bag through eval-bag, with the bag's own
audio lined up with the labels' time axis.
"""
from __future__ import annotations

import base64
import csv
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from erc_ros.evaluation import report

SCRIPT_TEXT = "<script>window.__pwned = 1</script> I said no!"

RESULT = {
    "model_id": "tiny-test", "backend": "onnxruntime", "mode": "offline", "asr": "bag",
    "bags": [{"bag": "/data/conv_a", "duration_s": 20.0, "wall_s": 1.0, "estimates": 5,
              "labelled": 5, "lost": 1},
             {"bag": "/data/conv_b", "duration_s": 5.0, "wall_s": 0.2, "estimates": 1,
              "labelled": 1, "lost": 0}],
    "duration_s": 25.0, "wall_s": 1.2, "realtime_factor": 20.8, "utterances": 6,
    "estimates": 6, "lost": 1, "refused": {}, "latency_ms": {"p50": 12.0, "p95": 30.0,
                                                           "mean": 15.0, "max": 31.0},
    "accuracy": 0.6, "weighted_f1": 0.55, "macro_f1": 0.4,
    "per_class_f1": {"joy": 0.5, "anger": 0.0, "sadness": 0.0, "neutral": 1.0},
    "support": {"joy": 2, "anger": 1, "sadness": 0, "neutral": 2},
    "confusion": [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]],
    "confusion_labels": ["joy", "anger", "sadness", "neutral"],
    "senses": {"text": {"weighted_f1": 0.375, "uar": 0.25, "accuracy": 0.5, "read": 4},
               "voice": {"weighted_f1": 0.125, "uar": 0.0, "accuracy": 0.25, "read": 1},
               "face": {"weighted_f1": 0.5, "uar": 0.5, "accuracy": 0.25, "read": 1},
               "fused": {"weighted_f1": 0.55, "uar": 0.625, "accuracy": 0.6, "read": 5}},
    "failed": [{"bag": "/data/broken_bag", "error": "ValueError: <bad> record at 12 s"}]}


def _row(**kw) -> dict:
    base = {"bag": "conv_a", "utterance_id": "", "start": "", "end": "", "speaker": "",
            "text": "", "label": "", "predicted": "", "confidence": "", "heard": "",
            "est_speaker": "", "est_start": "", "est_end": "", "latency_ms": "", "lost": False,
            "text_label": "", "face_status": "", "face_label": "", "face_confidence": "",
            "voice_status": "", "voice_reason": "", "voice_label": "", "voice_confidence": ""}
    return {**base, **kw}


ROWS = [
    # 0: right, as written to the CSV (strings)
    _row(utterance_id="l1", start="100.000", end="102.500", speaker="Alice",
         text="Good morning!", label="joy", predicted="joy", confidence="0.8123",
         heard="good morning", est_speaker="speaker_0", est_start="100.050",
         est_end="102.400", latency_ms="12.50", lost="False", text_label="neutral",
         face_status="seen",
         face_label="joy", face_confidence="0.9000", voice_status="ok", voice_label="surprise",
         voice_confidence="0.8500"),
    # 1: wrong and confident, numbers; the texts carry markup
    _row(utterance_id="l2", start=103.0, end=106.0, speaker="Bob", text=SCRIPT_TEXT,
         label="anger", predicted="joy", confidence=0.91, heard="I said <b>no</b>",
         est_speaker="speaker_1", est_start=103.1, est_end=105.8, latency_ms=31.0,
         face_status="no_face", voice_status="uncertain", voice_reason="too_quiet"),
    # 2: lost (labelled, no estimate)
    _row(utterance_id="l3", start="107.0", end="109.0", speaker="Carol",
         text="I miss her.", label="sadness", lost=True),
    # 3: right
    _row(utterance_id="l4", start="110.0", end="112.0", speaker="Alice", text="Fine.",
         label="neutral", predicted="neutral", confidence="0.6", heard="fine",
         est_speaker="speaker_0", est_start="110.0", est_end="112.0", latency_ms="11.0",
         lost="False"),
    # 4: an estimate no label matched
    _row(utterance_id="e9", predicted="surprise", confidence="0.4", heard="uh huh",
         est_speaker="speaker_3", est_start="118.0", est_end="118.6", latency_ms="9.5"),
    # 5: wrong, less confident
    _row(utterance_id="l5", start="113.0", end="115.5", speaker="Bob", text="Yay.",
         label="joy", predicted="anger", confidence="0.55", heard="yay",
         est_speaker="speaker_1", est_start="113.0", est_end="115.4", latency_ms="14.0",
         lost="False"),
    # 6: another bag, whose audio is not available
    _row(bag="conv_b", utterance_id="m1", start="5.0", end="7.0", speaker="Dave",
         text="Hello.", label="neutral", predicted="neutral", confidence="0.7",
         heard="hello", est_speaker="speaker_0", est_start="5.0", est_end="7.0",
         latency_ms="10.0", lost="False"),
]
WRONG, LOST, BOB = {"1", "5"}, {"2"}, {"1", "5"}


def _tone(bag: str, start: float, end: float):
    """A stand-in AudioSource: a 220 Hz tone for conv_a, nothing for the others."""
    if bag != "conv_a":
        return None
    t = np.arange(int(round((end - start) * 16000))) / 16000
    return (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    return report.write_report(tmp_path_factory.mktemp("report") / "report.html", RESULT, ROWS,
                               audio=_tone, title="eval-bag test")


def _outside_scripts(html: str) -> str:
    return re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.S | re.I)


def test_page_is_self_contained_and_escapes_texts(page_file):
    from plotly.offline import get_plotlyjs
    html = page_file.read_text()
    assert html.count(get_plotlyjs()) == 1  # plotly.js inlined, once
    markup = _outside_scripts(html)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", markup, re.I)
    assert not re.search(r"<script[^>]+\bsrc\s*=", html, re.I)
    assert "<link" not in markup.replace('<link rel="icon" href="data:,">', "")
    # the texts are data: escaped in the page, never markup
    assert "<script>window.__pwned" not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt; I said no!" in html
    assert "I said <b>no</b>" not in markup and "I said &lt;b&gt;no&lt;/b&gt;" in html
    # the failed bag, prominently, escaped
    assert 'id="failed"' in html and "/data/broken_bag" in html
    assert "ValueError: &lt;bad&gt; record at 12 s" in html
    # one box per utterance with times; lost and unlabelled ones marked
    boxes = re.findall(r'<div class="utt f-item([^"]*)"\s+id="utt-(\d+)"', markup)
    assert sorted(i for _, i in boxes) == sorted(str(i) for i in range(len(ROWS)))
    kinds = {i: cls.split() for cls, i in boxes}
    assert kinds["2"] == ["lost"] and kinds["4"] == ["unlabelled"]
    assert {i for i, c in kinds.items() if "wrong" in c} == WRONG
    # the worst errors: most confident first
    worst = markup[markup.index('id="worst"'):markup.index('id="utterances"')]
    assert [int(i) for i in re.findall(r'<tr class="row" data-idx="(\d+)"', worst)] == [1, 5]
    # ... play the utterance table's clip: each clip is in the page once
    assert "data:audio" not in worst and worst.count('class="play" data-idx=') == 2
    # each clip of conv_a embedded (Ogg/Vorbis data URI), none for conv_b (no audio)
    clips = {}
    for tr in markup[markup.index('id="utt-table"'):].split('<tr class="row')[1:]:
        clip = re.search(r'src="data:audio/ogg;base64,([^"]+)"', tr)
        clips[re.search(r'data-idx="(\d+)"', tr).group(1)] = clip.group(1) if clip else None
    assert {i for i, c in clips.items() if c} == {"0", "1", "2", "3", "4", "5"}
    assert clips["6"] is None
    # each expert's own word beside the fused label: the face's, then the voice's (its label
    # and probability, else its status and why)
    rows = {re.search(r'data-idx="(\d+)"', tr).group(1): tr
            for tr in markup[markup.index('id="utt-table"'):].split('<tr class="row')[1:]}
    cells = {i: re.findall(r"<td>(.*?)</td>", tr, re.S) for i, tr in rows.items()}
    assert cells["0"][cells["0"].index("neutral") + 1].startswith("joy")  # text, then face
    assert 'joy <span class="muted">0.90</span>' in cells["0"]
    assert 'surprise <span class="muted">0.85</span>' in cells["0"]
    assert 'uncertain <span class="muted">too_quiet</span>' in cells["1"]
    assert cells["3"].count("–") >= 2  # neither expert said anything
    import soundfile as sf
    samples, rate = sf.read(io.BytesIO(base64.b64decode(clips["1"])))
    # the clip spans the label and the estimate, padded: 103.0 - 0.1 .. 106.0 + 0.1
    assert rate == 16000 and abs(len(samples) / rate - 3.2) < 0.02
    # each sense's figures beside the fused one, a column each
    senses = markup[markup.index('id="senses"'):]
    senses = senses[:senses.index("</table>")]
    assert re.findall(r'<th class="num">(\w+)</th>', senses) == ["text", "voice", "face",
                                                                   "fused"]
    f1 = senses[senses.index("weighted F1"):senses.index("UAR")]
    assert re.findall(r'<td class="num">([^<]*)</td>', f1) == ["0.375", "0.125", "0.500",
                                                               "0.550"]


def test_rows_as_numbers_or_strings_read_the_same():
    as_text = [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in ROWS]
    a, b = report.utterances(ROWS), report.utterances(as_text)
    assert a == b
    assert [u["wrong"] for u in a] == [False, True, False, False, False, True, False]
    assert a[2]["lost"] and a[4]["unlabelled"] and a[4]["lane"] == "speaker_3"
    # an older utterances.csv: no `heard` column, the unmatched estimate's text in `text`
    old = [{k: v for k, v in r.items() if k != "heard"} for r in as_text]
    old[4]["text"] = "uh huh"
    unmatched = report.utterances(old)[4]
    assert unmatched["heard"] == "uh huh" and unmatched["said"] == ""


def test_report_without_audio_or_scores(tmp_path):
    """A run with no labelled estimate (no metrics) still gives a page, without clips."""
    bare = {k: v for k, v in RESULT.items() if k not in
            ("accuracy", "weighted_f1", "macro_f1", "per_class_f1", "support", "confusion",
             "confusion_labels", "latency_ms", "senses")}
    html = report.write_report(tmp_path / "r.html", bare, [ROWS[2]]).read_text()
    markup = _outside_scripts(html)
    assert "src=\"data:audio" not in markup and 'class="utt f-item lost"' in markup
    assert "No labelled estimate to score" in markup and 'id="senses"' not in markup


def test_bag_audio_follows_the_audio_buffer(tmp_path):
    """48 kHz audio with AudioInfo, then a clock jump: the clips come out at 16 kHz on the
    header stamps' axis, from either epoch (the buffer's new epoch does not lose the old)."""
    from erc_ros.core.types import AudioFormat
    from erc_ros.ros import convert
    from erc_ros.bags.make_bag import write_bag

    rate, chunk = 48000, 4800
    msgs = [("/mic/info", 49.9, convert.audio_info_msg(AudioFormat(sample_rate=rate)))]
    for t0, hz in ((50.0, 300.0), (70.0, 500.0)):  # 19 s apart: past max_gap_fill_seconds
        t = np.arange(rate) / rate
        pcm = np.rint(8000 * np.sin(2 * np.pi * hz * t)).astype("<i2")
        for i in range(0, rate, chunk):  # recorded when each chunk ends, as a driver sends
            msgs.append(("/mic/audio", t0 + (i + chunk) / rate,
                         convert.pcm16_to_audio_msg(pcm[i:i + chunk], t0 + i / rate)))
    write_bag(sorted(msgs, key=lambda m: m[1]), tmp_path / "bag")
    audio = report.bag_audio(tmp_path / "bag")
    assert audio is not None
    for start, hz in ((50.2, 300.0), (70.2, 500.0)):
        x = audio("bag", start, start + 0.6)
        assert len(x) == 9600
        spectrum = np.abs(np.fft.rfft(x))
        assert abs(np.argmax(spectrum) * 16000 / len(x) - hz) < 5
        assert abs(np.sqrt(np.mean(x ** 2)) - 8000 / 32768 / np.sqrt(2)) < 0.01
    assert audio("bag", 60.0, 61.0) is None  # between the epochs: nothing recorded
    tail = audio("bag", 70.5, 71.5)  # past the end: zeros
    assert np.abs(tail[:6000]).max() > 0.1 and not tail[9000:].any()
    assert audio.refused == {}


# --- in a browser ----------------------------------------------------------------------------

def test_report_in_headless_chromium(page_file, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (tools/setup.sh --browser installs it)")
    from playwright.sync_api import sync_playwright

    url = page_file.resolve().as_uri()
    requests, refused, errors = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})

            def route(r):  # the report itself only; anything else fails
                if r.request.url == url:
                    r.continue_()
                else:
                    refused.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function(
                "document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3",
                timeout=20000)
            charts = page.eval_on_selector_all(
                ".js-plotly-plot", "els => els.map(e => e.querySelectorAll('svg').length)")
            assert len(charts) == 3 and all(n > 0 for n in charts)
            assert page.evaluate("window.__pwned") is None  # the <script> text never ran
            visible = ("els => els.filter(e => e.offsetParent !== null)"
                       ".map(e => e.dataset.idx)")
            assert len(page.query_selector_all(".utt")) == len(ROWS)
            assert set(page.eval_on_selector_all(".utt", visible)) == \
                {str(i) for i in range(len(ROWS))}

            page.check("#f-wrong")
            assert set(page.eval_on_selector_all(".utt", visible)) == WRONG | LOST
            assert set(page.eval_on_selector_all("#utt-table tr.row", visible)) == WRONG | LOST
            page.uncheck("#f-wrong")
            page.select_option("#f-speaker", "Bob")
            assert set(page.eval_on_selector_all(".utt", visible)) == BOB
            assert set(page.eval_on_selector_all("#utt-table tr.row", visible)) == BOB
            page.select_option("#f-pred", "anger")
            assert set(page.eval_on_selector_all(".utt", visible)) == {"5"}
            page.click("#f-reset")
            assert len(page.eval_on_selector_all(".utt", visible)) == len(ROWS)

            page.hover("#utt-1")  # the hover card shows the texts as text
            tip = page.inner_text("#tip")
            assert SCRIPT_TEXT in tip and "I said <b>no</b>" in tip
            assert "voice uncertain (too_quiet)" in tip and "face no_face" in tip
            page.click("#utt-1")
            assert page.is_visible("#detail")
            assert page.get_attribute("#detail-audio", "src").startswith("data:audio/ogg;base64,")
            duration = page.evaluate("""async () => {
                const a = document.querySelector('#utt-table audio');
                if (!a.src.startsWith('data:audio/ogg;base64,')) return -1;
                await new Promise((ok, fail) => {
                    a.onloadedmetadata = ok; a.onerror = () => fail('error ' + a.error.code);
                    a.preload = 'metadata'; a.load(); setTimeout(() => fail('timeout'), 10000);
                });
                return a.duration; }""")
            assert 2.5 < duration < 3.0, duration  # row 0's clip: 99.9 .. 102.6 s
            # a worst error's play button plays that turn's clip in the utterance table
            page.click('#worst button.play[data-idx="1"]')
            page.wait_for_function("""() => !document.querySelector(
                '#utt-table tr[data-idx="1"] audio').paused""", timeout=10000)
            page.mouse.move(0, 0)
            page.click("#detail-close")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10000
    if os.environ.get("ERC_ROS_REPORT_SCREENSHOT"):
        dest = Path(os.environ["ERC_ROS_REPORT_SCREENSHOT"])
        if dest.is_dir():
            dest = dest / shot.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest)
    assert not refused, refused
    assert all(u == url or u.startswith("data:") for u in requests), requests
    assert not errors, errors


# --- end to end ------------------------------------------------------------------------------

@pytest.mark.ros
def test_report_of_a_generated_bag(tmp_path, model):
    from _ros_support import FAST_PERCEPTION, make_bag
    from rclpy.serialization import deserialize_message

    from erc_ros.ros import convert
    from erc_ros.ros.replay import message_class, read_bag
    from erc_ros.evaluation import eval_bag

    bag = make_bag(tmp_path / "conv")
    out = tmp_path / "run"
    result = eval_bag.evaluate([str(bag)], model_dir=str(model), out=out, progress_bar=False,
                               sets=tuple(f"{k}={v}" for k, v in FAST_PERCEPTION.items()))
    with open(out / "utterances.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    # each sense alone on the same utterances; the fused one is the published label's
    assert list(result["senses"]) == ["text", "voice", "face", "fused"]
    assert result["senses"]["fused"]["weighted_f1"] == pytest.approx(result["weighted_f1"])
    assert result["senses"]["fused"]["uar"] == pytest.approx(result["uar"])
    assert result["senses"]["text"]["read"] == sum(bool(r["text_label"]) for r in rows
                                                   if r["label"] and r["lost"] == "False")
    assert {"text_label", "voice_label", "face_label"} <= set(rows[0])

    # The audio time axis is the labels' and estimates': the audio messages' header stamps
    # (the first sample of each chunk), not their record times (a chunk's end).
    audio = report.bag_audio(bag)
    chunks = []
    for _, typename, _, raw in read_bag(bag, {"/audio"}):
        msg = deserialize_message(raw, message_class(typename))
        chunks.append((convert.time_to_float(msg.header.stamp),
                       np.frombuffer(bytes(msg.audio.data), "<i2")))
    pcm = np.concatenate([c for _, c in chunks]).astype(np.float32) / 32768.0
    t0 = chunks[0][0]
    assert np.array_equal(audio("conv", t0, t0 + len(pcm) / 16000), pcm)
    labels = sorted((float(r["start"]), float(r["end"])) for r in rows)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    for s, e in labels:  # speech inside each turn, silence just before it
        assert rms(audio("conv", s, e)) > 0.02
        assert rms(audio("conv", s - 0.1, s)) < 0.1 * rms(audio("conv", s, s + 0.1))
    for (_, e1), (s2, _) in zip(labels, labels[1:]):
        assert rms(audio("conv", e1 + 0.02, s2 - 0.02)) < 0.005

    page = report.write_report(out / "report.html", result, rows,
                               audio=report.bags_audio([bag])).read_text()
    assert page.count('class="utt f-item') == 4
    assert len(re.findall(r'<audio controls preload="none" src="data:audio/ogg;base64,',
                          _outside_scripts(page))) >= 4
    assert result["model_id"] in page and "Alice" in page and 'id="senses"' in page
