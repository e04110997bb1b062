"""Learn how the senses weigh in the published label (:mod:`erc_ros.runtime.senses`) on dev
compositions of real people, and say what it gives on the part of them it did not learn
from (the command: :mod:`erc_ros.commands.fit_senses`).

MELD's raw media are not on our machines, so the compositions are made from each sense's own
real data, each as the nodes read it:

- ``meld``: MELD dev's dialogues, their words read by the text model (gold text, gold
  speakers, in context), each speaker's face one of the two portraits the spoken benchmarks
  show (:func:`erc_ros.synth.faces.face_image`, the same face whatever the line: a resting
  face, no emotion), no voice (the voice expert calls 98 % of synthetic voices unfamiliar);
- ``ravdess``: RAVDESS actors in two-person conversations of ``turns`` turns, each turn a
  clip: the voice expert's reading of it out of fold (a network that never heard the actor:
  6-fold cross-validation by actor on the voice recipe's cached features, its temperature and
  gate as training sets them), the text model's reading of the sentence it says, no face;
- ``ravdess+faces``: the same with a FER2013 public_test face of the turn's label on the
  camera (the face expert's reading);
- ``meld+voices``: MELD dev's words (gold text, in context) and a RAVDESS voice of the turn's
  label, as when a person's words and voice both carry what they feel: each speaker of a
  dialogue speaks with one actor's voice, each turn a clip of that actor with the turn's label
  (the voice expert's reading out of fold), no face. Scored, not learned from by default
  (:data:`FITTED`).

The fit: ``theta`` minimises the mean of each composition's negative log-likelihood (so
each counts the same, whatever its size; a fusion that does not weigh the face reads
the ``ravdess+faces`` rows as ``ravdess`` rows, which then count twice) plus ``l2`` *
|theta|^2, by L-BFGS. The report fits on one part (RAVDESS actors 1-15, FER faces of even
index, MELD dialogues of even number) and scores the other; the shipped fusion is then
fitted on all of it. Features, l2 and the weighting are fixed; which compositions, and
what dev chose after seeing the check half: docs/fusion.md.

"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.optimize import minimize

from erc_ros.core.audio_files import read_audio_16k
from erc_ros.core.types import FACE_CLASSES, VOICE_OK, VOICE_UNFAMILIAR, Utterance
from erc_ros.datasets.meld import load_meld
from erc_ros.datasets.voices import VoiceClip, read_voices, speaker_folds
from erc_ros.paths import cache_root, sha256_file
from erc_ros.runtime.senses import (EPS, FEATURES, SENSES, Reading, SenseFusion,
                                    SpeakerBaselines, features, log_dist)
from erc_ros.runtime.voice_expert import normalized_entropy
from erc_ros.training.metrics import scores
from erc_ros.training.recipes import RECIPES
from erc_ros.training.voice_stage import (VoiceStageConfig, cross_validate, fit_temperature,
                                          softmax_t)

#: RAVDESS's two sentences (the statement field of its file names).
RAVDESS_SENTENCES = {1: "Kids are talking by the door.", 2: "Dogs are sitting by the door."}
GROUPS = ("meld", "ravdess", "ravdess+faces", "meld+voices")
#: The compositions the shipped fusion learns from; ``meld+voices`` is scored beside them:
#: learned from, it cost RAVDESS voices heard through the nodes up to 4.9 points (docs/fusion.md).
FITTED = ("meld", "ravdess", "ravdess+faces")


@dataclass
class Row:
    group: str
    part: str  # "fit" or "check"
    label: int
    readings: dict  # sense -> Reading


def _log(s: str) -> None:
    print(f"fit-senses: {s}", flush=True)


# --- readings --------------------------------------------------------------------------------

def voice_out_of_fold(data: Path, features_file: Path) -> dict:
    """Every RAVDESS clip's voice reading by a network that never heard its actor (the voice
    recipe's cross-validation on its cached features): probabilities (FACE_CLASSES order),
    whether the gate lets it through, label, actor and sentence. Kept in the cache, keyed by
    the features' sha256."""
    clips = read_voices(f"ravdess:{data}")
    cache = cache_root() / "senses" / f"voice_oof2-{sha256_file(features_file)[:16]}.npz"
    if cache.is_file():
        z = np.load(cache)
        return {k: z[k] for k in z.files}
    z = np.load(features_file)
    ok = z["readable"]
    if len(ok) != len(clips):
        raise SystemExit(f"error: {features_file}: {len(ok)} clips, the data has {len(clips)}")
    feats = z["features"][ok]
    clips = [c for c, k in zip(clips, ok) if k]
    cfg = VoiceStageConfig.from_recipe(RECIPES["voice"])
    labels = np.array([FACE_CLASSES.index(c.label) for c in clips])
    speakers = np.array([c.speaker for c in clips])
    oof = cross_validate(feats, labels, speakers, speaker_folds(clips, cfg.folds), cfg,
                         log=_log)
    t = fit_temperature(oof["logits"], labels)
    p = softmax_t(oof["logits"], t)
    ent = np.array([normalized_entropy(x) for x in p])
    familiar = oof["distance"] <= np.quantile(oof["distance"], cfg.gate_distance_quantile)
    keep = familiar & (ent <= np.quantile(ent, cfg.gate_entropy_quantile))
    out = {"probs": p, "ok": keep, "unfamiliar": ~familiar, **_clip_fields(clips)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def _clip_fields(clips: list[VoiceClip]) -> dict:
    return {"label": np.array([FACE_CLASSES.index(c.label) for c in clips]),
            "speaker": np.array([c.speaker for c in clips]),
            "sentence": np.array([int(c.path.stem.split("-")[4]) for c in clips])}


def voice_readings(expert, clips: list[VoiceClip]) -> dict:
    """RAVDESS clips read by a voice expert (:class:`~erc_ros.runtime.voice_expert.VoiceExpert`)
    as the nodes read an utterance, in :func:`voice_out_of_fold`'s form. An expert that
    learned from these actors reads them more surely than it reads a stranger: fit on actors
    it never heard."""
    probs, ok = np.zeros((len(clips), len(FACE_CLASSES))), np.zeros(len(clips), bool)
    unfamiliar = np.zeros(len(clips), bool)
    for i, c in enumerate(clips):
        r = expert.predict(read_audio_16k(c.path)[0])
        ok[i] = r.status == VOICE_OK
        unfamiliar[i] = r.reason == VOICE_UNFAMILIAR
        if r.probabilities is not None:
            probs[i] = r.probabilities
    return {"probs": probs, "ok": ok, "unfamiliar": unfamiliar, **_clip_fields(clips)}


def class_order(names) -> np.ndarray:
    """Index into FACE_CLASSES of each of ``names``."""
    return np.array([FACE_CLASSES.index(str(c).lower()) for c in names])


def meld_rows(pipeline, csv_path: Path, face_of, dialogues: Optional[int] = None) -> list[Row]:
    """MELD dev (its first ``dialogues``, default all): the text model on each line in
    context; each speaker's portrait face (``face_of(speaker index)``)."""
    order = class_order(pipeline.class_names)
    rows = []
    for i, d in enumerate(load_meld(csv_path)[:dialogues]):
        pipeline.reset()
        spk_index: dict[str, int] = {}
        base = SpeakerBaselines()
        for u, y in zip(d.utterances, d.labels):
            v = Utterance(u.utterance_id, d.conversation_id, u.speaker_id, u.start, u.end,
                          u.text)
            est = pipeline.predict(v)
            if not est.text_probabilities:
                continue
            text = np.zeros(len(FACE_CLASSES))
            text[order] = est.text_probabilities
            face = face_of(spk_index.setdefault(u.speaker_id, len(spk_index)))
            readings = {"text": Reading(text),
                        "face": Reading(face, base.get(u.speaker_id, "face"))}
            base.add(u.speaker_id, "face", face)
            rows.append(Row("meld", "fit" if i % 2 == 0 else "check", int(y), readings))
    return rows


def ravdess_rows(pipeline, voice: dict, faces: Optional[tuple], turns: int,
                 seed: int) -> list[Row]:
    """Two-actor conversations of ``turns`` clips each (all clips, each once); with
    ``faces`` (probabilities, labels, part of each face) a face of the turn's label too."""
    rng = np.random.default_rng(seed)
    order = class_order(pipeline.class_names)
    actors = sorted(set(voice["speaker"]))
    by_actor = {a: list(rng.permutation(np.flatnonzero(voice["speaker"] == a)))
                for a in actors}
    rows = []
    n = 0
    while True:
        left = [a for a in actors if by_actor[a]]
        if len(left) < 2:
            break
        # a pair on the same side of the fit / check line (actors 1-15 / 16-18)
        a = left[int(rng.integers(len(left)))]
        side = [b for b in left if b != a and (int(b[-2:]) > 15) == (int(a[-2:]) > 15)]
        if not side:
            by_actor[a].clear()
            continue
        b = side[int(rng.integers(len(side)))]
        part = "check" if int(a[-2:]) > 15 else "fit"
        pipeline.reset()
        base = SpeakerBaselines()
        cid = f"ravdess-{n}"
        n += 1
        for k in range(turns):
            who = (a, b)[k % 2]
            if not by_actor[who]:
                break
            j = by_actor[who].pop()
            u = Utterance(f"{cid}-{k}", cid, who, float(k), k + 0.9,
                          RAVDESS_SENTENCES[int(voice["sentence"][j])])
            est = pipeline.predict(u)
            text = np.zeros(len(FACE_CLASSES))
            text[order] = est.text_probabilities
            y = int(voice["label"][j])
            readings = {"text": Reading(text), **_voice_reading(voice, j, base, who)}
            rows.append(Row("ravdess", part, y, readings))
            if faces is not None:
                fp, fl, fpart = faces
                pool = np.flatnonzero((fl == y) & (fpart == part))
                f = fp[pool[int(rng.integers(len(pool)))]]
                with_face = dict(readings)
                with_face["face"] = Reading(f, base.get(who, "face"))
                base.add(who, "face", f)
                rows.append(Row("ravdess+faces", part, y, with_face))
    return rows


def _voice_reading(voice: dict, j: int, base: SpeakerBaselines, speaker: str) -> dict:
    """Clip ``j``'s voice reading as :func:`~erc_ros.runtime.senses.readings_of` makes it
    (``{"voice": Reading}``, or nothing where the gate kept it out), the speaker's usual voice
    and the conversation's familiar share taking it in."""
    if not voice["ok"][j]:
        if voice["unfamiliar"][j]:
            base.heard("voice", familiar=False)
        return {}
    r = Reading(voice["probs"][j], base.get(speaker, "voice"),
                base.heard("voice", familiar=True))
    base.add(speaker, "voice", voice["probs"][j])
    return {"voice": r}


def meld_voice_rows(pipeline, csv_path: Path, voice: dict, seed: int,
                    dialogues: Optional[int] = None) -> list[Row]:
    """MELD dev (its first ``dialogues``, default all), the text model on each line in
    context, each speaker's turns spoken with one RAVDESS actor's voice (``voice``,
    :func:`voice_out_of_fold`'s form): a clip of the turn's label, of that actor or, when the
    actor has none of it, of another on the same side; an actor's clips of a label are drawn
    in a random order, and again once all are drawn. Even dialogues take actors 1-15 (fit),
    odd ones actors 16-18 (check)."""
    rng = np.random.default_rng(seed)
    order = class_order(pipeline.class_names)
    actors = sorted(set(voice["speaker"]))
    side = {a: "check" if int(a[-2:]) > 15 else "fit" for a in actors}
    left: dict[tuple[str, int], list[int]] = {}

    def clip(actor: str, y: int) -> int:
        for a in [actor] + list(rng.permutation([b for b in actors if side[b] == side[actor]])):
            if not left.get((a, y)):
                left[(a, y)] = list(rng.permutation(np.flatnonzero(
                    (voice["speaker"] == a) & (voice["label"] == y))))
            if left[(a, y)]:
                return int(left[(a, y)].pop())
        raise ValueError(f"no RAVDESS clip of {FACE_CLASSES[y]} on {actor}'s side")

    rows = []
    for i, d in enumerate(load_meld(csv_path)[:dialogues]):
        part = "fit" if i % 2 == 0 else "check"
        pool = [a for a in actors if side[a] == part]
        if not pool:
            continue
        pipeline.reset()
        base = SpeakerBaselines()
        cast: dict[str, str] = {}
        for u, y in zip(d.utterances, d.labels):
            est = pipeline.predict(Utterance(u.utterance_id, d.conversation_id, u.speaker_id,
                                             u.start, u.end, u.text))
            if not est.text_probabilities:
                continue
            text = np.zeros(len(FACE_CLASSES))
            text[order] = est.text_probabilities
            actor = cast.setdefault(u.speaker_id, pool[int(rng.integers(len(pool)))])
            j = clip(actor, int(y))
            readings = {"text": Reading(text), **_voice_reading(voice, j, base, u.speaker_id)}
            rows.append(Row("meld+voices", part, int(y), readings))
    return rows


# --- the fit ---------------------------------------------------------------------------------

class Design:
    """The rows as arrays: per weighed sense (``senses``) its log distribution, its
    reliability features and whether it is weighed (it read; a face from the speaker's second
    reading on)."""

    def __init__(self, rows: list[Row], senses: tuple = SENSES, floor: float = EPS,
                 min_familiar_share: float = 0.0):
        n, k = len(rows), len(FACE_CLASSES)
        self.senses = tuple(s for s in SENSES if s in senses)
        # which readings weigh in: as the fusion being fitted decides it
        rule = SenseFusion(list(FACE_CLASSES), {s: [] for s in self.senses},
                           min_familiar_share=min_familiar_share)
        self.y = np.array([r.label for r in rows])
        groups = sorted({r.group for r in rows})
        g = np.array([groups.index(r.group) for r in rows])
        counts = np.bincount(g, minlength=len(groups))
        self.sample_w = 1.0 / (len(groups) * counts[g])
        self.ev, self.f, self.on = {}, {}, {}
        for s in self.senses:
            self.ev[s] = np.zeros((n, k))
            self.f[s] = np.zeros((n, len(FEATURES)))
            self.on[s] = np.zeros(n, bool)
            for i, r in enumerate(rows):
                rd = r.readings.get(s)
                if not rule.counts(s, rd):
                    continue
                self.on[s][i] = True
                self.ev[s][i] = log_dist(rd.probs, floor)
                self.f[s][i] = features(rd.probs, rd.baseline)
        # a row with one sense is that sense's reading whatever the weights (as fuse())
        alone = sum(self.on[s].astype(int) for s in self.senses) == 1
        for s in self.senses:
            self.f[s][alone] = 0.0


def _unpack(x: np.ndarray, senses: tuple) -> dict:
    m = len(FEATURES)
    return {s: x[i * m:(i + 1) * m] for i, s in enumerate(senses)}


def fused_logits(x: np.ndarray, d: Design) -> np.ndarray:
    """:meth:`SenseFusion.fuse` on every row at once (weights that sum to one)."""
    theta = _unpack(x, d.senses)
    z = np.zeros_like(d.ev["text"])
    total = np.zeros(len(z))
    for s in d.senses:
        w = np.logaddexp(0.0, d.f[s] @ theta[s]) * d.on[s]
        z += w[:, None] * d.ev[s]
        total += w
    return z / np.maximum(total, 1e-12)[:, None]


def objective(x: np.ndarray, d: Design, l2: float) -> float:
    z = fused_logits(x, d)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    nll = -logp[np.arange(len(d.y)), d.y]
    return float((d.sample_w * nll).sum() + l2 * (x ** 2).sum())


def fit(rows: list[Row], l2: float = 1e-3, senses: tuple = SENSES,
        floor: float = EPS, min_familiar_share: float = 0.0) -> SenseFusion:
    """The fusion of ``senses`` (the others are reported, not weighed) fitted on ``rows``,
    each reading held at ``floor`` or above before pooling, a voice weighed while
    ``min_familiar_share`` of the conversation's voices or more were familiar."""
    if "text" not in senses:
        raise ValueError("the fusion weighs the text model and other senses: text is needed")
    d = Design(rows, senses, floor, min_familiar_share)
    m = len(FEATURES)
    x0 = np.zeros(len(d.senses) * m)
    for i in range(len(d.senses)):
        x0[i * m] = 0.55  # softplus(0.55) ~ 1: every sense as its own reading says
    res = minimize(objective, x0, args=(d, l2), method="L-BFGS-B")
    return SenseFusion(list(FACE_CLASSES),
                       {s: v.tolist() for s, v in _unpack(res.x, d.senses).items()},
                       floor=floor, min_familiar_share=min_familiar_share)


def predictions(fusion: SenseFusion, rows: list[Row]) -> dict[str, list[int]]:
    """Each sense's label alone (-1 where it did not read) and the fused one."""
    out: dict[str, list[int]] = {s: [] for s in (*SENSES, "fused")}
    for r in rows:
        for s in SENSES:
            rd = r.readings.get(s)
            out[s].append(int(np.argmax(rd.probs)) if rd is not None else -1)
        p, _, _ = fusion.fuse(r.readings)
        out["fused"].append(int(np.argmax(p)) if len(p) else -1)
    return out


def changed(y: list[int], text: list[int], fused: list[int]) -> dict:
    """How the fused label differs from the text model's on the same turns: the turns it
    changed, from right to wrong and from wrong to right (a fused label that is the text's
    is unchanged; so is a turn with no fused label)."""
    pairs = [(a, t, f) for a, t, f in zip(y, text, fused) if f >= 0 and f != t]
    return {"changed": len(pairs),
            "right_to_wrong": sum(t == a for a, t, _ in pairs),
            "wrong_to_right": sum(f == a for a, _, f in pairs)}


def report(fusion: SenseFusion, rows: list[Row]) -> dict:
    """Per composition: each sense's and the fused label's scores (a sense that did not
    read a turn is wrong on it), and the turns where the fused label is not the text's
    (``fused_vs_text``, :func:`changed`)."""
    out = {}
    for g in GROUPS:
        sel = [r for r in rows if r.group == g]
        if not sel:
            continue
        y = [r.label for r in sel]
        pred = predictions(fusion, sel)
        out[g] = {"turns": len(sel), "fused_vs_text": changed(y, pred["text"], pred["fused"])}
        for s, ps in pred.items():
            if s != "fused" and all(i < 0 for i in ps):
                continue  # RAVDESS has no face, MELD's gold text no voice
            sc = scores(y, ps, list(FACE_CLASSES))
            out[g][s] = {"weighted_f1": sc["weighted_f1"], "uar": sc["uar"],
                         "accuracy": sc["accuracy"], "read": int(sum(i >= 0 for i in ps))}
    return out


def table(rep: dict) -> str:
    lines = ["| composition | turns | text wF1 / UAR | voice wF1 / UAR | face wF1 / UAR | "
             "fused wF1 / UAR | fused is not text: turns (right -> wrong, wrong -> right) |",
             "|---|---|---|---|---|---|---|"]
    for g, r in rep.items():
        cells = [f"{r[s]['weighted_f1']:.2f} / {r[s]['uar']:.2f}" if s in r else "-"
                 for s in ("text", "voice", "face", "fused")]
        c = r["fused_vs_text"]
        cells.append(f"{c['changed']} ({c['right_to_wrong']}, {c['wrong_to_right']})")
        lines.append(f"| {g} | {r['turns']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
