"""A text recipe's run (``train --recipe default|teacher|plain|tiny``).

Stage 1 fine-tunes the prompt text encoder end to end with the concat head
(:mod:`text_stage`), in cycles (warm restarts, optionally distilled from teachers or the
previous cycle); the recipe's ``fusion_stage`` then fits fresh heads over the encoder's cached
vectors (:mod:`fusion_stage`), and its ``rounds`` repeat a cycle and a stage 2 over the
finished model, each kept only if it beats the model before it on dev. The saved model uses
text only (``trained_modalities``): the corpora here have no audio/video to train those
branches. The output directory is self-describing (see :mod:`erc_ros.models.artefact`), with
dev metrics and the data sha256s in its provenance, a ``train_log.json`` and a dev
confusion-matrix PNG.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from erc_ros.models.artefact import (add_artefact, check_model_id, load_model_dir, read_manifest,
                                     save_trained_model_dir, sha256_file)
from erc_ros.models.encoders.audio import AudioEncoderConfig
from erc_ros.models.encoders.text import TextEncoderConfig
from erc_ros.models.encoders.video import VideoEncoderConfig
from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config
from erc_ros.models.packaged import PackagedModelError, mpnet_dir
from erc_ros.models.preprocessing import PreprocessorConfig, PromptConfig, packaged_minilm_dir
from erc_ros.paths import cache_root
from erc_ros.runtime import quantize
from erc_ros.training import corpora
from erc_ros.training.deployed import SELECT_RULES, int8_text_vectors, selection_figure, with_text
from erc_ros.training.distributed import DistContext
from erc_ros.training.fusion_stage import (FusionStageConfig, dev_figures, encode_dialogues,
                                           fit_head, per_dialogue, predict_cached, use_head)
from erc_ros.training.metrics import plot_confusion, scores
from erc_ros.training.provenance import model_reference, provenance
from erc_ros.training.recipes import with_flags
from erc_ros.training.teachers import recipe_teachers
from erc_ros.training.text_stage import (TextStageConfig, seed_everything, teacher_logits,
                                         train_text_stage)


def build_from_recipe(r: dict, label_names, model_id: str):
    """A new model as recipe ``r`` describes it (encoder, pooling, freezing, prompt, the
    audio and video branches), its text weights to travel in the model directory."""
    enc = r["encoder"]
    if enc == "tiny":
        text = tiny_text_config()
        tok = packaged_minilm_dir() / "tokenizer.json"
    else:
        try:
            path = {"minilm": packaged_minilm_dir, "mpnet": mpnet_dir}.get(enc, lambda: Path(enc))()
        except PackagedModelError as e:
            raise SystemExit(f"error: {e}") from None
        text = TextEncoderConfig(pretrained=str(path))
        tok = path / "tokenizer.json"
    text.pooling = r["pooling"]
    text.freeze_word_embeddings = r["freeze_word_embeddings"]
    text.freeze_layers = r.get("freeze_layers", 0)
    small = enc == "tiny"
    cfg = ErcModelConfig(
        model_id=model_id, label_names=tuple(label_names), text=text,
        audio=AudioEncoderConfig(dim=8 if small else 64) if r["audio"] else None,
        video=VideoEncoderConfig(dim=8 if small else 64) if r["video"] else None,
        fusion_head="concat", fusion={"dropout": 0.1},
        preprocessing=PreprocessorConfig(prompt=PromptConfig(
            max_length=r["max_length"], past_context=r["past_context"])))
    model = build_model(cfg, tok)
    model.config.text.pretrained = None  # weights travel in the model directory
    return model


def _figure(record: dict) -> str:
    """A dev record's weighted F1 for a message: FP32, and INT8 where it was measured."""
    f = f"{record.get('weighted_f1')}"
    f += f" (INT8 {record['weighted_f1_int8']})" if "weighted_f1_int8" in record else ""
    if "head_mean" in record:
        f += f", {len(record['heads'])} heads' mean {record['head_mean']}"
    return f


def _snapshot(model):
    """What :func:`_restore` needs to undo a round: every tensor, and the fusion head as a
    module with its config (stage 2 may put a head of another kind in its place)."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            copy.deepcopy(model.fusion), model.config.fusion_head,
            copy.deepcopy(model.config.fusion))


def _restore(model, snapshot) -> None:
    state, fusion, name, fusion_config = snapshot
    model.fusion, model.config.fusion_head, model.config.fusion = fusion, name, fusion_config
    model.load_state_dict(state)


def _fusion_stage(model, r: dict, train, dev, best: dict, history: list, threads: int,
                  prefix_dir: str = "", teacher=None, store=None, keep: bool = False,
                  cache_vectors: bool = False):
    """Stage 2: fresh heads over the fine-tuned encoder's cached vectors (encoder frozen),
    one per head seed (the recipe's ``fusion_stage.head_seeds``, default 1); the best of them
    by the recipe's rule (``select``: FP32, or the worse of FP32 and the ONNX Runtime INT8
    copy, where the model as it stands is scored by that rule too) replaces the stage-1 head
    only if it beats it on dev. ``teacher``: trained teachers' logits over ``train``'s
    labelled utterances, distilled into the head with the weight the recipe's
    ``fusion_stage`` gives as ``distill``. ``store``: see :func:`_int8_dev`. Returns (best,
    dev scores or None); with several head seeds ``best`` carries each head's figures and
    ``head_mean``, the mean of their selection figures: what the encoder is worth, where one
    head's figure is partly its seed's luck. ``keep``: the best new head replaces the stage-1
    head whatever dev says (said so). ``cache_vectors``: the encoder's vectors are kept in the
    training cache (``prefix_dir``), keyed by model and data: a head refit over a finished
    model, run again with another seed over the same data, reads them back."""
    fs = r["fusion_stage"]
    select = r.get("select", "fp32")
    model.eval()
    kw = dict(prefix_cache_dir=prefix_dir) if r.get("cache_frozen") else {}
    if cache_vectors and prefix_dir:
        kw["cache_dir"] = prefix_dir
    ftr, fdv = encode_dialogues(model, train, **kw), encode_dialogues(model, dev, **kw)
    fdv8 = _int8_dev(model, dev, fdv, select, threads, store)
    rule = select if fdv8 is not None else "fp32"
    if fdv8 is not None:  # the model as it stands, by the same rule as the new heads
        best = dict(best, **dev_figures(model.fusion, fdv, model.label_names, fdv8))
    # Off unless the recipe's fusion_stage names a weight (docs/results.md measures it).
    distill = fs.get("distill", 0.0) if teacher is not None else 0.0
    fitted = []
    for seed in range(r["seed"], r["seed"] + int(fs.get("head_seeds", 1))):
        cfg = FusionStageConfig(epochs=fs["epochs"], class_weight_power=fs["class_weight_power"],
                                lr=fs.get("lr", 5e-4), modality_dropout=0.0, threads=threads,
                                seed=seed, distill=distill)
        head, hcfg, s2 = fit_head(model, fs["head"], ftr, fdv, cfg, seed=seed, progress=True,
                                  teacher=per_dialogue(teacher, ftr) if distill > 0 else None,
                                  dev_int8=fdv8, select=rule)
        history += [dict(h, stage=2, head=fs["head"], head_seed=seed) for h in s2["history"]]
        fitted.append((head, hcfg, dict(s2["best"], head_seed=seed)))
    head, hcfg, got = max(fitted, key=lambda f: selection_figure(f[2], rule))  # first of ties
    spread = dict(head_mean=round(float(np.mean([selection_figure(f[2], rule)
                                                 for f in fitted])), 2),
                  heads=[f[2] for f in fitted]) if len(fitted) > 1 else {}
    if selection_figure(got, rule) <= selection_figure(best, rule):
        if not keep:
            print(f"stage 2 ({fs['head']}) did not beat stage 1 on dev; keeping the stage-1 "
                  "head", file=sys.stderr)
            return dict(best, select=select, **spread), None
        print(f"stage 2 ({fs['head']}) did not beat stage 1 on dev: its head kept by "
              "--keep-rounds", file=sys.stderr)
    use_head(model, fs["head"], head, hcfg)
    yt, yp = predict_cached(head, fdv)
    return dict(got, stage=2, head=fs["head"], select=select, **spread), \
        scores(yt, yp, model.label_names)


def _beats(a: dict, b: dict, select: str) -> bool:
    """Whether round ``a`` beats the model as it stood (``b``): by the mean of their stage-2
    heads' figures where both have one (the encoders compared, not two heads' seeds), else
    by the recipe's selection figure."""
    if "head_mean" in a and "head_mean" in b:
        return a["head_mean"] > b["head_mean"]
    return selection_figure(a, select) > selection_figure(b, select)


def _int8_dev(model, dev, fdv, select: str, threads: int, store=None):
    """``fdv`` (the dev dialogues' cached vectors) with the text vectors of ``model``'s ONNX
    Runtime INT8 copy, where the recipe selects by it (``select: fp32+int8``), else None.
    ``store(model, directory)``: how the run saves the model; the INT8 copy is then made from
    the weights as saved (float16), as ``prepare`` will make it: dynamic INT8's error is a
    draw that any perturbation of the weights re-rolls (docs/training.md).
    None too when that copy is one the runtime rejects (its vectors' mean cosine to FP32
    below ``quantize.MIN_COSINE``, as for MPNet): the nodes then run the encoder in FP32,
    so the FP32 figure is the robot's."""
    if select not in SELECT_RULES:
        raise SystemExit(f"error: recipe select {select!r}: one of {', '.join(SELECT_RULES)}")
    if select != "fp32+int8":
        return None
    if store is None:
        vecs = int8_text_vectors(model, dev, threads=threads)
    else:
        with tempfile.TemporaryDirectory(prefix="erc-stored-") as tmp:
            store(model, Path(tmp) / "model")
            vecs = int8_text_vectors(load_model_dir(Path(tmp) / "model"), dev, threads=threads)
    cos = float(quantize.row_cosines(torch.cat([c.text for c in fdv]).numpy(),
                                     torch.cat(vecs).numpy()).mean())
    if cos < quantize.MIN_COSINE:
        print(f"the INT8 text encoder's dev vectors have a mean cosine of {cos:.3f} to FP32 "
              f"(< {quantize.MIN_COSINE}): the runtime would run it in FP32, so selection is "
              "on FP32", file=sys.stderr)
        return None
    return with_text(fdv, vecs)


def _model_figures(model, r: dict, dev, threads: int, prefix_dir: str) -> dict:
    """The dev figures of ``model`` as it stands (its own head over whole dialogues), by the
    recipe's rule: FP32 weighted F1 and accuracy, and the INT8 copy's weighted F1 where the
    rule needs it."""
    kw = dict(prefix_cache_dir=prefix_dir) if r.get("cache_frozen") else {}
    fdv = encode_dialogues(model, dev, progress=False, **kw)
    fdv8 = _int8_dev(model, dev, fdv, r.get("select", "fp32"), threads)
    out = dev_figures(model.fusion, fdv, model.label_names, fdv8)
    model.train()
    return out


def start_model(args, r: dict, dev, labels, model_id: str):
    """(model, prior): the ``--init`` model (on the flags' prompt where they change it) and
    its dev figures, or a new model from the recipe and no figures. The init's figures are
    dropped when the prompt changes (they were measured with the old one), and measured here
    when the recipe selects by INT8 too: a figure in its manifest may come from another INT8
    copy (the INT8 error moves with any rounding of the weights) or another machine's
    kernels."""
    if not args.init:
        return build_from_recipe(r, labels, model_id), {}
    model = load_model_dir(args.init).train()
    model.config.model_id = model_id
    prior = read_manifest(args.init)["provenance"].get("dev_metrics", {})
    prompt = model.preprocessor.config.prompt
    changed = {k: getattr(args, k) for k in ("past_context", "max_length")
               if getattr(args, k) is not None and getattr(args, k) != getattr(prompt, k)}
    for k, v in changed.items():  # continue training on another prompt
        setattr(prompt, k, v)
    if changed:
        prior = {}
    elif prior and r.get("select", "fp32") != "fp32":
        prior = dict(prior, **_model_figures(model, r, dev, args.threads,
                                             str(cache_root() / "train")))
    return model, prior


class TextRun:
    """One run of a text recipe: the model, data and teachers that its cycles, stage 2 and
    rounds share, the history they log, and the span of cycles and rounds it runs
    (``--cycle``, ``--cycles``). Cycles number from 1; the recipe's rounds number on after
    its cycles."""

    def __init__(self, args, r: dict, model, train, dev, corpus, teacher, teacher_vectors,
                 model_id: str):
        self.args, self.r, self.model, self.model_id = args, r, model, model_id
        self.train, self.dev = train, dev
        # Stage 2's head learns over whole dialogues: the corpus's own, without GoEmotions'
        # one-comment "dialogues", which would outweigh them.
        self.corpus = corpus
        self.teacher, self.teacher_vectors = teacher, teacher_vectors
        n0 = sum(int(y >= 0) for d in corpus for y in d.labels)  # the corpus's rows
        self.corpus_teacher = None if teacher is None else teacher[:n0]
        self.external = bool(r["freeze_word_embeddings"] or r.get("freeze_layers")) and \
            r["encoder"] in ("minilm", "mpnet")
        self.cycles = [{}, *r.get("then", [])]
        self.rounds = r.get("rounds", [])
        self.n_all = len(self.cycles) + len(self.rounds)
        if args.cycle > len(self.cycles) and not args.init:
            raise SystemExit(f"error: --cycle {args.cycle}: the recipe's cycles "
                             f"1-{len(self.cycles)} build the model; a later one (a round, or "
                             "past the last: the fusion stage only) needs --init DIR")
        self.prefix_dir = str(cache_root() / "train")
        self.first = max(1, args.cycle) - 1
        self.last = self.n_all if not args.cycles else min(self.n_all, self.first + args.cycles)
        self.two_stage = bool(r.get("fusion_stage") and dev)
        self.select = r.get("select", "fp32")
        self.history: list = []
        self.config = None  # the last cycle's TextStageConfig
        self.undone = 0  # rounds undone so far in this run: the next round's seed offset

    def store(self, m, directory, prov=None) -> None:
        """Save ``m`` as this run's model directory holds it (float16 unless --fp32, the
        frozen packaged tensors referenced): the final save, and the copy whose INT8 export
        selection scores (the export of unrounded weights is another draw of INT8's noise)."""
        save_trained_model_dir(m, directory, provenance=prov,
                               external_word_embeddings=self.external,
                               dtype="float32" if self.args.fp32 else "float16")

    def stage_config(self, rc: dict) -> TextStageConfig:
        """The text stage's config from recipe keys ``rc`` and the run's flags."""
        return TextStageConfig(**{k: rc[k] for k in TextStageConfig.__dataclass_fields__
                                  if k in rc},
                               max_steps=self.args.max_steps, max_minutes=self.args.max_minutes,
                               threads=self.args.threads, prefix_cache_dir=self.prefix_dir)

    def cycle(self, ci: int) -> dict:
        """Cycle or round ``ci`` (0-based) of stage 1; its summary (``text_stage``)."""
        r = self.r
        rc = dict(r, **(self.cycles + self.rounds)[ci])
        if ci >= len(self.cycles) and "seed" not in self.rounds[ci - len(self.cycles)]:
            # After an undone round the model is as it was, and the same seed would repeat
            # that round to the bit: each undone round moves the next one to the next seed
            # (a run of kept rounds keeps the recipe's seed).
            rc["seed"] = r["seed"] + self.undone
        self.config = self.stage_config(rc)
        cycle_teacher = self.teacher
        if rc.get("teacher") == "previous":
            # Self-distillation across cycles: the model as the previous cycle left it
            # teaches this one (born-again networks).
            cycle_teacher = teacher_logits([self.model.eval()], self.train)
            self.model.train()
        s = train_text_stage(self.model, self.train, self.dev, self.config, teacher=cycle_teacher,
                             teacher_features=self.teacher_vectors)
        self.history.extend(dict(h, cycle=ci + 1) for h in s["history"])
        return s

    def fusion_stage(self, best: dict, keep: bool = False, cache_vectors: bool = False):
        """:func:`_fusion_stage` over the model as it stands, on the corpus's dialogues."""
        return _fusion_stage(self.model, self.r, self.corpus, self.dev, best, self.history,
                             self.args.threads, self.prefix_dir, self.corpus_teacher, self.store,
                             keep=keep, cache_vectors=cache_vectors)

    def goemotions_stage(self, ge) -> None:
        """A first stage on GoEmotions alone (selected on the real dev set)."""
        rs = dict(self.r, **{k: v for k, v in self.r.get("goemotions", {}).items()
                             if k in TextStageConfig.__dataclass_fields__})
        s = train_text_stage(self.model, ge, self.dev, self.stage_config(rs))
        self.history += [dict(h, cycle=0, data="goemotions") for h in s["history"]]

    def train_cycles(self, prior: dict, ge=None):
        """The recipe's cycles in the span (after the GoEmotions stage, ``ge``, if any);
        the model is left with the best weights. Returns (best, its dev scores)."""
        # A prior measured after a fusion stage (a refitted head) is not comparable with a
        # cycle's own head: then this run's cycles compete among themselves, the fusion stage
        # runs on the best, and that result must beat the prior, else the init model is kept.
        # A prior from a cycle's own head competes with this run's cycles.
        best, best_state, best_scores = dict(prior), None, None
        if prior and self.two_stage and prior.get("stage") == 2:
            best = {}
        elif prior:
            best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if ge is not None:
            self.goemotions_stage(ge)
        for ci in range(self.first, min(self.last, len(self.cycles))):
            s = self.cycle(ci)
            if s["best"].get("weighted_f1", -1) > best.get("weighted_f1", -1) or \
                    best_state is None:
                best = dict(s["best"], cycle=ci + 1)
                best_scores = s["best_scores"]
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if best_state is not None:  # None: no cycle ran (--cycle past the last: stage 2 only)
            self.model.load_state_dict(best_state)
        return best, best_scores

    @property
    def runs_rounds(self) -> bool:
        return self.two_stage and self.last > len(self.cycles) and self.first < self.n_all

    def stage_two(self, prior: dict, best: dict, best_scores):
        """Stage 2 after the cycles (or alone, past the last cycle), which must beat the
        ``--init`` model's ``prior`` figure, else that model is kept; or, where only rounds
        run over an init model, its figure over the head seeds for them to beat. Returns
        (best, its dev scores)."""
        args, first = self.args, self.first
        if self.two_stage and (first < len(self.cycles) or not self.runs_rounds):
            # a run past the last cycle is this head alone: --keep-rounds keeps it
            best, s2_scores = self.fusion_stage(best, keep=args.keep_rounds and first >= self.n_all,
                                                cache_vectors=first >= self.n_all)
            best_scores = s2_scores or best_scores
            behind = prior and \
                selection_figure(best, self.select) <= selection_figure(prior, self.select)
            if behind and args.keep_rounds:
                print(f"dev {_figure(best)} does not beat the init model's {_figure(prior)}: "
                      "kept by --keep-rounds", file=sys.stderr)
            elif behind:
                print(f"dev {_figure(best)} does not beat the init model's "
                      f"{_figure(prior)}: keeping the init model", file=sys.stderr)
                self.model = load_model_dir(args.init).train()
                self.model.config.model_id = self.model_id
                best, best_scores = dict(prior, kept_init=True), None
        elif self.runs_rounds and prior:  # rounds over the init model: they must beat its figure
            best = dict(prior, kept_init=True)
            if int(self.r["fusion_stage"].get("head_seeds", 1)) > 1 and not args.keep_rounds:
                # What its encoder is worth over the head seeds, for the rounds to compare with
                # (and one of those heads in place of its own where it beats it).
                best, s2_scores = self.fusion_stage(best)
                best_scores = s2_scores or best_scores
        return best, best_scores

    def train_rounds(self, best: dict, best_scores):
        """Rounds over the finished model (encoder and stage-2 head): a cycle, then a fresh
        stage-2 head; the round is kept only if that beats the model as it stood on dev, else
        the model is restored (the next round starts from it again). Selected after stage 2,
        because a cycle's own head can rank encoders otherwise. Returns (best, its dev
        scores)."""
        select = self.select
        for ci in range(max(self.first, len(self.cycles)), self.last if self.runs_rounds else 0):
            kept = _snapshot(self.model)
            s = self.cycle(ci)
            got, s2_scores = self.fusion_stage(s["best"])
            if _beats(got, best, select) or self.args.keep_rounds:
                verdict = "kept" if _beats(got, best, select) else \
                    f"kept by --keep-rounds (the model before it: {_figure(best)})"
                best, best_scores = dict(got, cycle=ci + 1), s2_scores or s["best_scores"]
                print(f"round (cycle {ci + 1}): dev {_figure(got)}: {verdict}", file=sys.stderr)
            else:
                print(f"round (cycle {ci + 1}): dev {_figure(got)} does not beat "
                      f"{_figure(best)}: restoring the model before it", file=sys.stderr)
                _restore(self.model, kept)
                self.undone += 1
        return best, best_scores


def save(run: TextRun, summary: dict, files) -> None:
    """The model directory (``--out``): the model, its provenance, ``train_log.json`` and the
    dev confusion-matrix PNG."""
    args, model = run.args, run.model
    out = Path(args.out)
    prov = provenance(args, recipe=summary["recipe"],
                      data={str(f.name): sha256_file(f) for f in files},
                      dev_metrics=summary["best"], train_minutes=summary["wall_minutes"])
    run.store(model, out, prov)
    log = {k: v for k, v in summary.items() if k != "best_scores"}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    add_artefact(out, "train_log.json", "report")
    if summary.get("best_scores"):
        s = summary["best_scores"]
        plot_confusion(s["confusion"], s["label_names"], out / "dev_confusion.png",
                       f"{run.model_id} dev: wF1 {s['weighted_f1']} acc {s['accuracy']}")
        add_artefact(out, "dev_confusion.png", "report")
    b = summary["best"]
    print(f"\nsaved {out}  best dev: weighted F1 {_figure(b)}  accuracy "
          f"{b.get('accuracy')}  (epoch {b.get('epoch')}, "
          f"{'stage-2 ' + b['head'] + ' head' if b.get('stage') == 2 else str(b.get('weights')) + ' weights'})  "
          f"in {summary['wall_minutes']} min", file=sys.stderr)


def train(args) -> int:
    """Train ``--recipe`` (a text recipe) with the command's flags into ``--out``."""
    r = with_flags(args.recipe, args)
    if args.init and args.freeze_layers is not None:
        raise SystemExit("error: --freeze-layers builds a new encoder; with --init the init "
                         "model's own freezing applies")
    train_set, dev, labels, files = corpora.training_data(args, r)
    seed_everything(r["seed"])
    model_id = check_model_id(args.model_id or f"erc-{args.recipe}-{time.strftime('%Y%m%d')}")
    model, prior = start_model(args, r, dev, labels, model_id)
    ge_mode, ge, ge_files = corpora.read_goemotions(args, r, labels)
    files += ge_files
    r["goemotions_used"] = {"mode": ge_mode, "comments": len(ge)}
    parts = [train_set, ge] if ge_mode == "mix" else [train_set]
    if ge_mode == "mix":
        train_set = train_set + ge
    teacher, teacher_vectors = recipe_teachers(args, r, parts, labels)
    run = TextRun(args, r, model, train_set, dev, parts[0], teacher, teacher_vectors, model_id)
    t0 = time.time()
    best, best_scores = run.train_cycles(prior, ge if ge_mode == "stage" else None)
    best, best_scores = run.stage_two(prior, best, best_scores)
    best, best_scores = run.train_rounds(best, best_scores)
    # Both stages train the head on text alone: audio/video stay unused until a fusion stage
    # trains it with them (their projections are zero until then).
    run.model.config.trained_modalities = ("text",)
    summary = {"history": run.history, "best": best, "best_scores": best_scores,
               # the cache folder by name, not this machine's path (the log travels)
               "config": dict(run.config.to_dict(), prefix_cache_dir="<cache>/train")
               if run.config is not None else {}}
    summary["recipe"] = {"name": args.recipe, **r, "cycle": args.cycle,
                         "init": model_reference(args.init) if args.init else ""}
    summary["wall_minutes"] = round((time.time() - t0) / 60, 1)
    if DistContext.from_env().rank != 0:
        return 0
    save(run, summary, files)
    return 0
