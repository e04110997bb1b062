"""bench-spoken: the scoring rules on hand-made cases, and a real run on two spoken MELD dev
dialogues (the shipped Kokoro set: no synthesis, the embedded recognizer, the nodes'
perception path)."""
from __future__ import annotations

import csv
import json
import re
from types import SimpleNamespace

import pytest

from erc_ros.evaluation.spoken_bags import enrolment_voices
from erc_ros.bench import spoken as bs
from erc_ros.cli import main
from erc_ros.evaluation.matching import (
    HEARD_AS,
    NONE,
    assign,
    classification,
    conversation_text,
    heard_as,
    owners,
    segment_ends,
)
from erc_ros.paths import data_root

DEV = data_root() / "meld" / "dev_sent_emo.csv"


def turn(uid, start, end, speaker="A", label="neutral", text="hello there"):
    return {"utterance_id": uid, "start": start, "end": end, "speaker": speaker,
            "label": label, "text": text}


def est(start, end, label="neutral", text="", speaker="s0", latency_ms=10.0):
    return SimpleNamespace(start=start, end=end, label=label, text=text, speaker_id=speaker,
                           latency_ms=latency_ms)


def test_turns_are_matched_merged_or_lost():
    turns = [turn("t1", 0.0, 2.0), turn("t2", 2.1, 2.6), turn("bc", 1.0, 1.3, "B", ""),
             turn("t3", 5.0, 6.0), turn("t4", 8.0, 9.0)]
    ests = [est(0.0, 2.7, "joy"),   # covers t1 (most) and t2: t2 is merged into it
            est(4.9, 6.1, "anger"),  # t3's own
            est(7.0, 7.5)]            # over nothing labelled: an extra estimate
    pairs, extra = assign(turns, ests)
    assert [p[0] for p in pairs] == ["matched", "merged", "matched", "lost"]
    assert pairs[1][1] is ests[0] and pairs[3][1] is None and extra == 1
    # One estimate per turn when they are apart; none at all: every turn lost.
    assert [p[0] for p in assign(turns, [])[0]] == ["lost"] * 4


def test_word_errors_are_over_whole_conversations_in_time_order():
    turns = [turn("t1", 0.0, 2.0, text="how are you"), turn("bc", 1.0, 1.4, "B", "", "yeah"),
             turn("t2", 3.0, 4.0, text="fine thanks"), turn("t3", 6.0, 7.0, text="bye")]
    # t1 heard in two pieces, t2 and t3 heard as one, an estimate without text
    ests = [est(1.1, 2.0, text="are you"), est(0.0, 1.0, text="how yeah"),
            est(3.0, 7.0, text="fine thanks bye"), est(8.0, 8.5, text="")]
    ref, hyp = conversation_text(turns, ests)
    assert ref == "how are you yeah fine thanks bye"
    assert hyp == "how yeah are you fine thanks bye"


def test_each_turn_is_heard_exact_joined_in_pieces_misheard_or_not_at_all():
    """heard_as compares words as the WER does (case, punctuation and contractions aside)."""
    said = "Oh my God! I can't believe it."
    assert heard_as(said, "oh, my god. I cannot believe it") == "exact"
    assert heard_as(said, "What? Oh my god, I can't believe it. Really?") == "joined"
    assert heard_as(said, "I can't believe it.") == "piece"
    assert heard_as(said, "Oh my god, I can't relieve it.") == "misheard"
    assert heard_as(said, "my godly I can't believe it") == "misheard"  # whole words only
    assert heard_as(said, " ... ") == "no_text"
    assert heard_as(said, None) == "lost"
    # A stage's turns grouped by the recognizer's hearing; every stage scored on each group.
    from erc_ros.core.types import Estimate

    def said(start, end, label, text):
        return Estimate("u", "c", "s0", start, end, label, ["neutral", "joy"],
                        [float(label == "neutral"), float(label == "joy")], text=text)
    t1, t2 = turn("t1", 0.0, 1.0, text="hello there"), turn("t2", 2.0, 3.0, text="bye now")
    stages = {name: bs.Stage(name) for name in ("transcripts", "asr")}
    stages["transcripts"].add("d", [t1, t2], [said(0, 1, "neutral", "Hello there."),
                                              said(2, 3, "joy", "Bye now.")], speech=False)
    stages["asr"].add("d", [t1, t2], [said(0, 1, "joy", "hello where"),
                                      said(2, 3, "joy", "bye now")], speech=False)
    hb = bs.heard_breakdown(stages, ["neutral", "joy"])
    assert hb["grouped_by"] == "asr" and list(hb["groups"]) == ["exact", "misheard"]
    assert hb["groups"]["misheard"] == {"turns": 1, "weighted_f1": {"transcripts": 100.0,
                                                                      "asr": 0.0}}
    assert [r["heard_as"] for r in stages["asr"].rows] == ["misheard", "exact"]
    assert bs.heard_breakdown({"transcripts": stages["transcripts"]}, ["neutral"]) is None


def test_lost_turns_count_as_wrong_and_stay_out_of_the_macro_mean():
    names = ["neutral", "joy"]
    m = classification(["neutral", "joy", "joy", "neutral"],
                          ["neutral", "joy", NONE, NONE], names)
    assert m["accuracy"] == 50.0
    assert set(m["per_class_f1"]) == {"neutral", "joy"}
    # each class: precision 1, recall 1/2 -> F1 2/3
    assert m["weighted_f1"] == pytest.approx(66.67, abs=0.01)
    assert m["macro_f1"] == pytest.approx(66.67, abs=0.01)
    with pytest.raises(ValueError, match="not the model's classes"):
        classification(["calm"], ["joy"], names)


def test_the_timeline_queues_work_behind_the_audio_and_earlier_work():
    ests = [est(0, 1, latency_ms=100), est(1, 2, latency_ms=100), est(2, 3, latency_ms=50)]
    # poll at 10 s takes 2 s and releases one; the next poll is due at 11 s but the worker
    # is busy until 12.1 s; the last poll comes when the audio does (20 s)
    polls = [(10.0, 2.0, 1), (11.0, 0.5, 1), (20.0, 0.01, 1)]
    done = bs.timeline(polls, ests)
    assert done == pytest.approx([12.1, 12.7, 20.06])
    # The first two tile one segment (sentences): only the second ends it. A stage keeps
    # the latency of the estimates that end a segment apart from the others'.
    assert segment_ends(ests) == [False, False, True]
    assert segment_ends([est(0, 1), est(1, 2), est(2.5, 3)]) == [False, True, True]
    from erc_ros.core.types import Estimate

    st = bs.Stage("asr")
    st.add("d", [turn("t1", 0.0, 1.0), turn("t2", 1.0, 2.0), turn("t3", 2.5, 3.0)],
           [Estimate("u", "c", "s0", a, b, "neutral", ["neutral", "joy"], [1.0, 0.0],
                     text="hello there") for a, b in ((0, 1), (1, 2), (2.5, 3))],
           done_at=[4.0, 2.5, 3.5])
    m = st.result(["neutral", "joy"])
    assert m["speech_end_to_estimate_ms"]["n"] == 3
    assert m["speech_end_segment_last_ms"] == {"p50": 500.0, "p95": 500.0, "mean": 500.0,
                                               "n": 2}


def _two_dialogues(tmp_path):
    """Two short MELD dev dialogues as their own MELD-format file."""
    with open(DEV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by = {}
    for r in rows:
        by.setdefault(r["Dialogue_ID"], []).append(r)
    short = [d for d in sorted(by, key=int) if 3 <= len(by[d]) <= 5][:2]
    out = tmp_path / "two.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        for d in short:
            w.writerows(by[d])
    return out, sum(len(by[d]) for d in short)


@pytest.fixture(scope="module")
def spoken_run(tmp_path_factory):
    """One bench-spoken run of the four stages on two dialogues: (its folder, the number of
    labelled turns); the JSON in r.json, --out in rows/, the bags in bags/."""
    from erc_ros.core.asr import prepare_model

    assert DEV.exists(), f"MELD dev CSV expected at {DEV} (set ERC_ROS_DATA)"
    prepare_model("base")  # into this run's cache (set-up's step)
    tmp_path = tmp_path_factory.mktemp("bench_spoken")
    csv_path, n = _two_dialogues(tmp_path)
    assert main(["bench-spoken", "--meld-csv", str(csv_path), "--voices", "kokoro",
                 "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "rows"),
                 "--bags", str(tmp_path / "bags")]) == 0
    return tmp_path, n


def test_bench_spoken_runs_the_four_stages_on_the_shipped_voices(spoken_run):
    tmp_path, n = spoken_run
    r = json.loads((tmp_path / "r.json").read_text())
    st = r["stages"]
    assert list(st) == list(bs.STAGES)
    for s in bs.STAGES:  # the interface used from outside
        assert st[s]["turns"] == n and 0 <= st[s]["weighted_f1"] <= 100
        assert st[s]["matched"] + st[s]["merged"] + st[s]["lost"] == n
        # each sense alone on the same turns; the fused one is the stage's own figure
        se = st[s]["senses"]
        assert list(se) == ["text", "voice", "face", "fused"]
        assert all(set(f) == {"weighted_f1", "uar", "accuracy", "read"} for f in se.values())
        assert se["fused"]["weighted_f1"] == st[s]["weighted_f1"]
        assert se["fused"]["accuracy"] == st[s]["accuracy"]
        assert se["fused"]["read"] <= n - st[s]["lost"]
    for s in ("transcripts", "asr_gold_speakers", "asr"):
        for k in ("wer", "der"):
            assert isinstance(st[s][k], float)
        lat = st[s]["speech_end_to_estimate_ms"]
        assert 0 < lat["p50"] <= lat["p95"]
    # Gold transcripts are heard exactly and every turn comes out.
    assert st["transcripts"]["wer"] == 0.0 and st["transcripts"]["lost"] == 0
    # The same utterances with the gold speakers: segmentation is all DER has left.
    assert st["asr_gold_speakers"]["der"] <= st["asr"]["der"] + 1e-9
    assert st["asr_gold_speakers"]["wer"] == st["asr"]["wer"]
    assert r["machine"]["gemm_gflops"] > 0 and r["machine"]["cpu"]
    assert r["asr"]["realtime_factor"] > 0
    assert 0 <= r["asr"]["refit"] + r["asr"]["fallback"] <= r["asr"]["segments"]
    assert (tmp_path / "r.png").stat().st_size > 10_000
    # The voices came from the shipped set (no synthesis, no extra needed).
    rows = list(csv.DictReader(open(tmp_path / "rows" / "asr.csv")))
    assert len(rows) == n and all(r_["status"] in ("matched", "merged", "lost") for r_ in rows)
    assert sum(bool(r_["text_label"]) for r_ in rows) == st["asr"]["senses"]["text"]["read"]
    assert "| stage | text | voice | face | fused |" in bs.summary(r)
    # Every turn is in one group of how the recognizer heard it; gold transcripts are exact.
    hb = r["heard_as"]
    assert hb["grouped_by"] == "asr" and sum(g["turns"] for g in hb["groups"].values()) == n
    assert all(set(g["weighted_f1"]) == set(bs.STAGES) for g in hb["groups"].values())
    assert {r_["heard_as"] for r_ in rows} <= set(HEARD_AS)
    heard_b = list(csv.DictReader(open(tmp_path / "rows" / "transcripts.csv")))
    assert {r_["heard_as"] for r_ in heard_b} == {"exact"}
    # A second run reuses the bags it made.
    bags = sorted(p.name for p in (tmp_path / "bags").iterdir())
    assert len(bags) == 2 and all(p.startswith("kokoro-dia") for p in bags)


def _page_data(html: str) -> list[dict]:
    """The utterances a report page carries (its JSON block)."""
    m = re.search(r'<script type="application/json" id="utt-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def _external_links(html: str) -> list[str]:
    """Every src/href of the page's markup that is not a data: URI or an anchor."""
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.S | re.I)
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", markup, re.I)
    scripts = re.findall(r"<script\b[^>]*\bsrc\s*=[^>]*>", html, re.I)
    return [v for v in links if not v.startswith(("data:", "#"))] + scripts


def test_bench_spoken_writes_a_report_per_stage(spoken_run, capsys, monkeypatch):
    """report-<stage>.html: eval-bag's page of the stage's labelled turns, the gold line
    said and the stage's text heard, its weighted F1, each turn's clip from the bags; no
    network. Above eval-bag's cap on the conversation's length, pages without audio."""
    from erc_ros.evaluation import eval_bag

    tmp_path, n = spoken_run
    r = json.loads((tmp_path / "r.json").read_text())
    for s in bs.STAGES:
        html = (tmp_path / "rows" / f"report-{s}.html").read_text()
        rows = list(csv.DictReader(open(tmp_path / "rows" / f"{s}.csv")))
        utts = _page_data(html)
        assert len(utts) == n == len(rows)
        assert [u["said"] for u in utts] == [x["text"] for x in rows]
        assert [u["heard"] for u in utts] == [x["heard"] for x in rows]
        assert [u["pred"] for u in utts] == [x["predicted"].lower() for x in rows]
        assert all(u["true"] and u["bag"].startswith("kokoro-dia") for u in utts)
        wf1 = r["stages"][s]["weighted_f1"]
        assert f"weighted F1 {wf1:.2f} %" in html  # the subtitle, as bench-spoken reports it
        assert f'<div class="tile-value">{wf1 / 100:.3f}</div>' in html  # eval-bag's tile
        assert html.count('src="data:audio/ogg;base64,') >= n  # a clip per turn
        assert not _external_links(html)
        assert 'id="senses"' in html  # each sense's figures, as fractions
        f1 = r["stages"][s]["senses"]["voice"]["weighted_f1"] / 100
        assert f'<td class="num">{f1:.3f}</td>' in html
    # the gold transcripts: each turn heard as it was said
    trans = _page_data((tmp_path / "rows" / "report-transcripts.html").read_text())
    assert all(u["heard"] == u["said"] for u in trans)

    # Past the cap: no audio, a note (the rows from the CSV, the lengths from the labels).
    monkeypatch.setattr(eval_bag, "REPORT_AUDIO_MAX_SECONDS", 1.0)
    bags = [{"dialogue": p.name.split("-")[1], "bag": p}
            for p in sorted((tmp_path / "bags").iterdir())]
    rows = list(csv.DictReader(open(tmp_path / "rows" / "asr.csv")))
    capsys.readouterr()
    [page] = bs.write_reports(tmp_path / "capped", r, {"asr": rows}, bags)
    assert "without their audio" in capsys.readouterr().err
    html = page.read_text()
    assert len(_page_data(html)) == n and "data:audio" not in html


def test_rescore_gives_the_run_figures_from_what_it_heard(spoken_run, tmp_path, capsys,
                                                          monkeypatch):
    """--rescore DIR with the run's own text model: the recorded estimates predicted again
    through the pipeline and matched to the turns as in the run give its text sense's
    figures (the run published the fused label), stage by stage, without synthesis or a
    recognizer; a folder without them is refused.
    --speakers gold tags each estimate by the labelled turn it overlaps most."""
    from erc_ros.evaluation import eval_bag

    run_dir, n = spoken_run
    r = json.loads((run_dir / "r.json").read_text())
    out = tmp_path / "again.json"
    assert main(["bench-spoken", "--rescore", str(run_dir / "rows"), "--json", str(out)]) == 0
    again = json.loads(out.read_text())
    assert list(again["stages"]) == list(bs.STAGES)
    for s in bs.STAGES:
        for k in ("matched", "merged", "lost"):
            assert again["stages"][s][k] == r["stages"][s][k], (s, k)
        for k in ("weighted_f1", "uar", "accuracy"):
            assert again["stages"][s][k] == r["stages"][s]["senses"]["text"][k], (s, k)
        assert again["stages"][s]["senses"]["text"] == r["stages"][s]["senses"]["text"]
    assert {g: v["turns"] for g, v in again["heard_as"]["groups"].items()} == \
        {g: v["turns"] for g, v in r["heard_as"]["groups"].items()}
    assert main(["bench-spoken", "--rescore", str(tmp_path), "--stages", "asr", "--json",
                 str(out)]) == 2
    assert "no asr.csv" in capsys.readouterr().err

    # --speakers gold: diarization without errors. (c) re-predicts (d)'s utterances with
    # the gold speakers' names; tagged by the turns they overlap, both read the same input.
    rows = run_dir / "rows"
    lab = [dict(t, start=float(t["start"]), end=float(t["end"]))
           for t in csv.DictReader(open(rows / "asr.csv"))]
    ests = list(csv.DictReader(open(rows / "asr_estimates.csv")))
    owner, _ = owners(lab, [SimpleNamespace(start=float(e["start"]), end=float(e["end"]))
                               for e in ests])
    assert (owner >= 0).all()  # every estimate overlaps a labelled turn here
    fed = []  # (speaker, text) of each utterance the pipeline is given
    make = eval_bag.make_pipeline

    def recording(*a, **k):
        p = make(*a, **k)
        predict = p.predict
        p.predict = lambda u: fed.append((u.speaker_id, u.text)) or predict(u)
        return p
    monkeypatch.setattr(eval_bag, "make_pipeline", recording)
    assert main(["bench-spoken", "--rescore", str(rows), "--speakers", "gold",
                 "--stages", "asr_gold_speakers,asr", "--json", str(out)]) == 0
    gold = json.loads(out.read_text())
    assert gold["speakers"] == "gold" and len(fed) == 2 * len(ests)
    assert fed[:len(ests)] == fed[len(ests):]
    assert {spk for spk, _ in fed} <= {f"speaker_{i}" for i in range(len(ests))}
    for k in ("weighted_f1", "matched", "merged", "confusion"):
        assert gold["stages"]["asr_gold_speakers"][k] == gold["stages"]["asr"][k], k
    assert main(["bench-spoken", "--speakers", "gold", "--json", str(out)]) == 2
    assert "needs --rescore" in capsys.readouterr().err


def test_gold_tags_name_each_estimate_by_the_turn_it_overlaps_most():
    """Each estimate takes the speaker of the labelled turn it overlaps most, one that
    overlaps none a tag of its own, all as speaker_N in order of first appearance."""
    lab = [{"start": 0.0, "end": 2.0, "speaker": "Ross"},
           {"start": 2.1, "end": 4.0, "speaker": "Rachel"},
           {"start": 6.0, "end": 7.0, "speaker": "Ross"}]
    est = [SimpleNamespace(start=0.0, end=1.0, speaker_id="speaker_0"),
           SimpleNamespace(start=1.0, end=2.6, speaker_id="speaker_0"),  # mostly Ross's
           SimpleNamespace(start=1.8, end=4.0, speaker_id="speaker_0"),  # mostly Rachel's
           SimpleNamespace(start=4.5, end=5.0, speaker_id="speaker_0"),  # a back-channel
           SimpleNamespace(start=6.0, end=7.0, speaker_id="speaker_1")]
    assert bs.gold_tags(est, lab) == ["speaker_0", "speaker_0", "speaker_1", "speaker_2",
                                      "speaker_0"]
    assert bs.gold_tags([], lab) == [] and bs.gold_tags(est[:1], []) == ["speaker_0"]


def test_the_household_voices_are_shipped_and_name_their_speaker(capsys, tmp_path):
    """bench-spoken --enroll: the six main characters' samples come from the shipped spoken
    set (no synthesis), each at least 1 s, and enrolled in a core they name a line of MELD
    dev each of them says in a dialogue, and no one else's."""
    from core_support import core_config

    from erc_ros.core.perception import PerceptionCore
    from erc_ros.synth.conversation import read_meld
    from erc_ros.synth.spoken_set import SPOKEN_ROOT
    from erc_ros.synth.voices import MAIN_CAST, cast, read_opus, speech_key

    folder = enrolment_voices("kokoro")
    assert sorted(f.stem for f in folder.glob("*.wav")) == sorted(MAIN_CAST)
    core = PerceptionCore(core_config(faces__enabled=False,
                                      diarization__voices=str(folder)))
    assert sorted(core.diarizer.enrolled) == sorted(MAIN_CAST)
    clips = json.loads((SPOKEN_ROOT / "kokoro" / "manifest.json").read_text())["clips"]
    named = {}
    for line in (x for dlg in read_meld(DEV) for x in dlg):
        # the first line of 2.5 s or more of each main character
        name = line.speaker
        if name not in MAIN_CAST or name in named:
            continue
        c = clips[speech_key(cast([name])[name], line.text)]
        if c["seconds"] >= 2.5:
            audio = read_opus(SPOKEN_ROOT / "kokoro" / c["file"])
            named[name] = core.diarizer.assign(core.embedder.embed_audio(audio), c["seconds"])
    assert len(named) == 6
    assert all(d.speaker_id == n and d.source == "enrolled" for n, d in named.items()), named
    with pytest.raises(ValueError, match="kokoro"):
        enrolment_voices("espeak")
    assert main(["bench-spoken", "--voices", "espeak", "--enroll", "--json",
                 str(tmp_path / "r.json")]) == 2
    assert "--enroll needs --voices kokoro" in capsys.readouterr().err


def test_heard_set_refuses_a_csv_that_is_not_meld(tmp_path, capsys):
    src = tmp_path / "emorynlp.csv"
    src.write_text("Utterance,Speaker,Emotion,Scene_ID\nHi.,Joey,Joyful,1\n")
    assert main(["heard-set", "--meld-csv", str(src), "--out", str(tmp_path / "h.csv")]) == 2
    err = capsys.readouterr().err
    assert "not a MELD-format CSV: no Dialogue_ID, Utterance_ID column" in err
    assert not (tmp_path / "h.csv").exists()


def test_bench_spoken_refuses_bad_input(tmp_path, capsys):
    assert main(["bench-spoken", "--meld-csv", str(tmp_path / "nope.csv"), "--json",
                 str(tmp_path / "r.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench-spoken", "--voices", "festival", "--json", str(tmp_path / "r.json")])


def test_heard_set_writes_what_the_robot_heard_as_meld_and_resumes(tmp_path, capsys):
    """heard-set on two spoken dialogues: a MELD-format file load_meld reads, every gold turn
    inside some utterance, labels from the turn each utterance overlaps most; a second run
    hears nothing again."""
    from erc_ros.core.asr import prepare_model
    from erc_ros.datasets.meld import load_meld

    prepare_model("base")
    csv_path, n = _two_dialogues(tmp_path)
    out = tmp_path / "heard.csv"
    cmd = ["heard-set", "--meld-csv", str(csv_path), "--voices", "kokoro", "--out", str(out),
           "--bags", str(tmp_path / "bags")]
    assert main(cmd) == 0
    rows = list(csv.DictReader(open(out)))
    gold = {(r["Dialogue_ID"], r["Utterance_ID"]): r for r in csv.DictReader(open(csv_path))}
    assert rows and {r["Dialogue_ID"] for r in rows} == {d for d, _ in gold}
    covered = {(r["Dialogue_ID"], g) for r in rows for g in r["Gold_Utterance_IDs"].split(";") if g}
    assert covered == set(gold)  # no turn lost
    for r in rows:
        if r["Emotion"]:
            owner = gold[(r["Dialogue_ID"], r["Gold_Utterance_IDs"].split(";")[0])]
            assert r["Emotion"] in {gold[(r["Dialogue_ID"], g)]["Emotion"]
                                    for g in r["Gold_Utterance_IDs"].split(";")}
            assert r["Gold_Text"] and owner["Dialogue_ID"] == r["Dialogue_ID"]
    dialogues = load_meld(out)
    assert sum(len(d.utterances) for d in dialogues) == len(rows)
    assert sorted(u.text for d in dialogues for u in d.utterances) == \
        sorted(" ".join(r["Utterance"].split()) for r in rows)
    capsys.readouterr()
    assert main(cmd) == 0
    assert "2 already in" in capsys.readouterr().out
    assert len(list(csv.DictReader(open(out)))) == len(rows)
