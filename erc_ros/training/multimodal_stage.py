"""`python -m erc_ros train --recipe multimodal --media DIR`: the audio and video branches.

    python -m erc_ros train --recipe multimodal --media MELD.Raw --out models/multimodal

Starts from a trained text model directory (``--init``, default the shipped
``models/default``) whose text encoder stays frozen: its vectors are computed once per
utterance (past context only, as live). Each utterance's clip is read as the perception
core reads live input (:mod:`erc_ros.training.media`: 16 kHz audio, the speaker's face
crops, the diarization d-vector), then turned into the encoders' raw inputs by the model's
own preprocessor (``audio_inputs``: the acoustic features + d-vector + flag;
``video_inputs``: the crops as tensors), exactly what the runtime feeds them. The audio
encoder, the video encoder and the fusion head then train together (:class:`MultimodalNet`
through :func:`~erc_ros.training.fusion_stage.train_fusion_stage`): class-weighted CE,
modality dropout (a present modality hidden at random, so the model stays good with any of
them missing), selection on dev weighted F1. The init model's head is the starting point:
its audio/video projections start at zero (``zero_init_av``), so training starts from the
text model's behaviour.

The saved directory is an ordinary model directory: ``trained_modalities`` names text plus
the modalities that had training data, and the nodes run it unchanged (``model_dir``).
The command prints dev weighted F1 of the init model (text only) and of the multimodal model
with each modality dropped, so what each sense adds is visible.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from erc_ros.core.config import PerceptionConfig
from erc_ros.core.types import MODALITIES
from erc_ros.datasets import iemocap, meld
from erc_ros.models.artefact import (add_artefact, check_model_id, load_model_dir, read_manifest,
                                     save_trained_model_dir, sha256_file)
from erc_ros.models.fusion import build_fusion
from erc_ros.models.labels import MELD_LABELS
from erc_ros.paths import cache_root, data_root
from erc_ros.runtime.manifest import default_model_dir
from erc_ros.training.fusion_stage import CachedDialogue
from erc_ros.training.media import MediaReader, prefetch_on_ray
from erc_ros.training.metrics import plot_confusion, scores

#: Flags of the text recipes that mean nothing here (the text model's prompt is kept).
TEXT_ONLY_FLAGS = ("encoder", "past_context", "max_length", "self_distill", "distill")


class MultimodalNet(nn.Module):
    """The audio and video encoders and a fusion head as one module with a fusion head's
    signature, over the encoders' raw inputs instead of their vectors::

        net(text[B,T,Dt], audio[B,T,F], video[B,T,NF,C+1,S,S], modality_mask[B,T,3],
            speaker_ids[B,T], padding_mask[B,T]) -> (logits, weights)

    ``audio``: the preprocessor's feature vectors; ``video``: its face tensors with the frame
    mask packed as one more channel (:func:`pack_video`). Each encoder runs only on the rows
    where its modality is present (after modality dropout, in training); the other rows get
    zeros, as the runtime feeds an absent modality. The modules are the model's own: training
    the net trains them in place."""

    def __init__(self, audio_encoder: Optional[nn.Module], video_encoder: Optional[nn.Module],
                 head: nn.Module, audio_dim: int, video_dim: int):
        super().__init__()
        self.audio_encoder = audio_encoder
        self.video_encoder = video_encoder
        self.head = head
        self.audio_dim, self.video_dim = audio_dim, video_dim

    def vectors(self, text, audio, video, modality_mask):
        b, t = modality_mask.shape[:2]
        a = text.new_zeros(b, t, self.audio_dim)
        v = text.new_zeros(b, t, self.video_dim)
        rows = modality_mask[..., 1]
        if self.audio_encoder is not None and bool(rows.any()):
            a = a.index_put((rows,), self.audio_encoder(audio[rows].float()))
        rows = modality_mask[..., 2]
        if self.video_encoder is not None and bool(rows.any()):
            pixels, frames = unpack_video(video[rows].float())
            v = v.index_put((rows,), self.video_encoder(pixels, frames))
        return a, v

    def forward(self, text, audio, video, modality_mask, speaker_ids, padding_mask):
        a, v = self.vectors(text, audio, video, modality_mask)
        return self.head(text, a, v, modality_mask, speaker_ids, padding_mask)

    def forward_with_aux(self, text, audio, video, modality_mask, speaker_ids, padding_mask):
        a, v = self.vectors(text, audio, video, modality_mask)
        return self.head.forward_with_aux(text, a, v, modality_mask, speaker_ids, padding_mask)


def pack_video(inputs: dict) -> np.ndarray:
    """The preprocessor's ``video_inputs`` of one utterance (``pixel_values`` [1,F,C,S,S],
    ``frame_mask`` [1,F]) as one float16 array [F, C+1, S, S]: the mask is the last channel
    (float16 keeps the 8-bit pixels' tensors to within 5e-4; memory halves)."""
    px = np.asarray(inputs["pixel_values"][0], np.float32)
    m = np.asarray(inputs["frame_mask"][0], np.float32)[:, None, None, None]
    return np.concatenate([px, np.broadcast_to(m, (px.shape[0], 1) + px.shape[2:])],
                          axis=1).astype(np.float16)


def unpack_video(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, F, C+1, S, S] -> (pixel_values [N, F, C, S, S], frame_mask [N, F] bool)."""
    return x[:, :, :-1], x[:, :, -1, 0, 0] > 0.5


def complete_model(model, audio_dim: int = 64, video_dim: int = 64) -> list[str]:
    """Give ``model`` the audio / video encoders it lacks (the feature-vector MLP and the
    small face CNN) and a head with matching widths, started from the old head's tensors
    wherever their shapes still fit (the text path: the model's behaviour is kept). Returns
    the modalities added."""
    from erc_ros.models.encoders.audio import AudioEncoderConfig, build_audio_encoder
    from erc_ros.models.encoders.video import VideoEncoderConfig, build_video_encoder

    added = []
    audio_cfg = model.preprocessor.config.audio
    if model.audio_encoder is not None and not model.uses("audio") and audio_cfg.kind == "prosody":
        # An untrained branch over the old 16 prosody statistics (models made before
        # eGeMAPS, the shipped default among them): the packaged features are eGeMAPS now.
        audio_cfg.kind = "egemaps"
        audio_dim = model.audio_encoder.dim
        model.audio_encoder = None
    if model.audio_encoder is None:
        cfg = AudioEncoderConfig(dim=audio_dim)
        cfg.in_dim = model.preprocessor.audio_feature_dim
        model.config.audio, model.audio_encoder = cfg, build_audio_encoder(cfg)
        added.append("audio")
    if model.video_encoder is None:
        cfg = VideoEncoderConfig(dim=video_dim,
                                 in_channels=1 if model.preprocessor.config.video.grayscale else 3)
        model.config.video, model.video_encoder = cfg, build_video_encoder(cfg)
        added.append("video")
    if added:
        fusion = dict(model.config.fusion, audio_dim=model.audio_encoder.dim,
                      video_dim=model.video_encoder.dim)
        head = build_fusion(model.config.fusion_head, fusion)
        state = head.state_dict()
        for k, v in model.fusion.state_dict().items():
            if k in state and state[k].shape == v.shape:
                state[k] = v
        head.load_state_dict(state)
        model.fusion, model.config.fusion = head, fusion
    return added


def check_model(model) -> None:
    """This stage keeps every utterance's encoder inputs in memory: feature-vector audio
    encoders and the small face CNN only (an SSL audio backbone or a ViT would need the
    waveforms and 224-px frames of a whole corpus)."""
    a, v = model.config.audio, model.config.video
    if model.preprocessor.config.audio.kind not in ("egemaps", "prosody") or \
            (a is not None and a.kind != "prosody"):
        raise SystemExit("error: the multimodal recipe trains feature-vector audio encoders "
                         "(eGeMAPS or prosody features + d-vector); this model's audio encoder "
                         f"is {a.kind if a else None!r} on {model.preprocessor.config.audio.kind!r} "
                         "inputs")
    if v is not None and v.kind != "cnn":
        raise SystemExit(f"error: the multimodal recipe trains the face CNN; this model's video "
                         f"encoder is {v.kind!r}")


def encoder_inputs(model, dialogues, texts: Sequence[CachedDialogue], reader,
                   desc: str) -> list[CachedDialogue]:
    """Each dialogue's text vectors (``texts``) with its utterances' raw audio and video
    encoder inputs, read through ``reader`` one clip at a time (the media are dropped once
    turned into inputs: a corpus's audio and crops do not fit in memory)."""

    pre = model.preprocessor
    nf = pre.config.video.num_frames
    c = 1 if pre.config.video.grayscale else 3
    s = pre.config.video.size
    out = []
    for (d, medias), cached in zip(reader.iter_dialogues(dialogues, desc), texts):
        t = len(d.utterances)
        audio = np.zeros((t, pre.audio_feature_dim), np.float32)
        video = np.zeros((t, nf, c + 1, s, s), np.float16)
        mask = cached.modality.clone()
        mask[:, 1:] = False
        for i, (u, m) in enumerate(zip(d.utterances, medias)):
            if m is None:
                continue
            v = copy.copy(u)
            v.features = dict(u.features)
            m.attach(v)
            if v.has_audio:
                audio[i] = pre.audio_inputs(v)["features"][0]
                mask[i, 1] = True
            if v.has_video:
                video[i] = pack_video(pre.video_inputs(v))
                mask[i, 2] = True
        out.append(CachedDialogue(cached.text, torch.from_numpy(audio), torch.from_numpy(video),
                                  mask, cached.speakers, cached.labels))
    return out


def with_modalities(data: Sequence[CachedDialogue], keep: Sequence[str]) -> list[CachedDialogue]:
    """``data`` with every modality not in ``keep`` marked absent."""

    cols = torch.tensor([m in keep for m in MODALITIES])
    return [CachedDialogue(c.text, c.audio, c.video, c.modality & cols, c.speakers, c.labels)
            for c in data]


def dev_scores(net, dev, keep, label_names) -> dict:
    from erc_ros.training.fusion_stage import predict_cached

    yt, yp = predict_cached(net, with_modalities(dev, keep))
    return scores(yt, yp, label_names)


def perception_config(pairs: Sequence[str]):
    """The perception core's configuration from ``SECTION.FIELD=VALUE`` strings (the
    robot's own, where it differs from the defaults)."""

    d = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --perception {pair!r}: expected SECTION.FIELD=VALUE")
        d[key.strip()] = value.strip()
    try:
        return PerceptionConfig.from_dict(d)
    except ValueError as e:
        raise SystemExit(f"error: --perception: {e}") from None


def _datasets(args, labels):
    """(train, dev, data files) with each dialogue's media whereabouts."""
    media = Path(args.media)
    if args.format == "meld":
        if list(labels) != list(MELD_LABELS):
            raise SystemExit(f"error: the init model's classes {list(labels)} are not MELD's")
        root = data_root()
        tr = Path(args.train or root / "meld" / "train_sent_emo.csv")
        dv = Path(args.dev or root / "meld" / "dev_sent_emo.csv")
        dirs = {}
        for split in ("train", "dev"):
            dirs[split] = meld.meld_split_dir(media, split)
            if dirs[split] is None:
                names = " or ".join(meld.MELD_SPLIT_DIRS[split])
                raise SystemExit(f"error: --media {media}: no MELD.Raw {split} clips "
                                 f"(dia*_utt*.mp4) in {names}, there or under {media / split}")
        print(f"MELD.Raw clips: train {dirs['train']}, dev {dirs['dev']}", file=sys.stderr)
        return (meld.load_meld(tr, dirs["train"]),
                meld.load_meld(dv, dirs["dev"]), [tr, dv])
    if args.format == "iemocap":
        root = Path(args.iemocap_root or media)
        want = iemocap.IEMOCAP4_LABELS if tuple(labels) == iemocap.IEMOCAP4_LABELS else \
            iemocap.IEMOCAP6_LABELS
        if tuple(labels) != tuple(want):
            raise SystemExit(f"error: the init model's classes {list(labels)} are not IEMOCAP's: "
                             "train a text model on IEMOCAP first (python -m erc_ros train "
                             "--format iemocap --iemocap-root ROOT --out DIR), then --init DIR")
        d = iemocap.load_iemocap(root, labels=want, with_media=True)
        if not d:
            raise SystemExit(f"error: no IEMOCAP dialogues under {root} "
                             "(Session*/dialog/transcriptions)")
        return ([x for x in d if not x.conversation_id.startswith("iemocap-Ses05")],
                [x for x in d if x.conversation_id.startswith("iemocap-Ses05")], [])
    raise SystemExit(f"error: --format {args.format} has no media; the multimodal recipe "
                     "reads MELD.Raw (meld) or IEMOCAP (iemocap)")


def run(args, recipe: dict, model_reference, provenance) -> int:
    """The command (``train_cli.run`` hands over ``--recipe multimodal``): ``recipe`` its
    settings, ``model_reference(dir)`` how a model is named in provenance,
    ``provenance(args, init, **fields)`` what the saved model records."""
    from erc_ros.training.fusion_stage import (FusionStageConfig, encode_dialogues,
                                               train_fusion_stage)
    from erc_ros.training.text_stage import seed_everything

    if not args.media:
        raise SystemExit("error: --recipe multimodal needs --media DIR (the MELD.Raw folder "
                         "with train_splits/ and dev_splits_complete/, or the IEMOCAP root)")
    if not Path(args.media).is_dir():
        raise SystemExit(f"error: --media {args.media}: no such folder")
    given = [f"--{k.replace('_', '-')}" for k in TEXT_ONLY_FLAGS if getattr(args, k) is not None]
    if given or args.teacher:
        raise SystemExit(f"error: {', '.join(given + ['--teacher'] * bool(args.teacher))}: the "
                         "multimodal recipe keeps the init model's text encoder and prompt")
    perception = perception_config(getattr(args, "perception", []))
    r = dict(recipe)
    for k in ("epochs", "lr", "class_weight_power", "seed"):
        if getattr(args, k) is not None:
            r[k] = getattr(args, k)
    init = Path(args.init or default_model_dir())
    t0 = time.time()
    seed_everything(r["seed"])
    model = load_model_dir(init)
    init_manifest = read_manifest(init)
    check_model(model)
    init_uses = [m for m in MODALITIES if model.uses(m)]
    train, dev, files = _datasets(args, model.label_names)
    if args.limit_dialogues:
        train, dev = train[: args.limit_dialogues], dev[: max(1, args.limit_dialogues // 4)]
    model.config.model_id = check_model_id(
        args.model_id or f"erc-multimodal-{time.strftime('%Y%m%d')}")
    added = complete_model(model, r["audio_dim"], r["video_dim"])
    if added:
        print(f"init model {init} had no {' / '.join(added)} encoder: new ones built "
              f"(dims {model.dims[1]} / {model.dims[2]})", file=sys.stderr)
    model.eval()

    # The frozen text encoder's vectors, once (kept in the cache, keyed by model and data).
    tcache = cache_root() / "train"
    texts = {name: encode_dialogues(model, part, tcache / f"multimodal-text-{name}.safetensors")
             for name, part in (("train", train), ("dev", dev))}
    reader, sets, media = MediaReader(perception, progress=True), {}, {}
    if getattr(args, "workers", 0) or getattr(args, "ray_address", None):
        try:  # the clips into the cache as Ray tasks; the passes below read them from it
            prefetch_on_ray(reader, list(train) + list(dev), args.workers, args.ray_address)
        except RuntimeError as e:  # Ray not installed
            raise SystemExit(f"error: {e}") from e
    for name, part in (("train", train), ("dev", dev)):
        sets[name] = encoder_inputs(model, part, texts[name], reader, f"{name} clips")
        reader.report(f"{name} media")
        media[name] = reader.summary()
        reader.counters = dict.fromkeys(reader.counters, 0)
    has = {name: {m: int(sum(int(c.modality[:, i].sum()) for c in sets[name]))
                  for i, m in enumerate(MODALITIES)} for name in sets}
    trained = [m for m in MODALITIES if m == "text" or has["train"][m] > 0 or m in init_uses]
    if not (has["train"]["audio"] or has["train"]["video"]):
        raise SystemExit("error: no training utterance has audio or a face: nothing to train "
                         "(see the warnings above)")

    net = MultimodalNet(model.audio_encoder, model.video_encoder, model.fusion,
                        model.dims[1], model.dims[2])
    labels = model.label_names
    init_dev = dev_scores(net, sets["dev"], init_uses, labels)
    cfg = FusionStageConfig(epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"],
                            class_weight_power=r["class_weight_power"],
                            modality_dropout=r["modality_dropout"], threads=args.threads,
                            seed=r["seed"])
    summary = train_fusion_stage(net, sets["train"], sets["dev"], labels, cfg,
                                 log=lambda s: print(s, file=sys.stderr), progress=True)
    model.config.trained_modalities = tuple(trained)
    full = [m for m in MODALITIES if m in trained]
    variants = {"all": full, "text only": ["text"],
                "no audio": [m for m in full if m != "audio"],
                "no video": [m for m in full if m != "video"]}
    ablation = {k: dev_scores(net, sets["dev"], keep, labels) for k, keep in variants.items()}
    best_scores = ablation["all"]
    wall = round((time.time() - t0) / 60, 1)

    out = Path(args.out)
    best = dict(summary["best"], stage="multimodal", modalities=full,
                init_weighted_f1=init_dev["weighted_f1"],
                ablation={k: {"weighted_f1": s["weighted_f1"], "accuracy": s["accuracy"]}
                          for k, s in ablation.items()})
    recipe = {"name": args.recipe, **r, "format": args.format,
              "perception": list(getattr(args, "perception", [])),
              "init": model_reference(init), "encoders_added": added}
    prov = provenance(args, init, recipe=recipe, data={f.name: sha256_file(f) for f in files},
                      media=media, dev_metrics=best, train_minutes=wall)
    save_trained_model_dir(model, out, provenance=prov,
                           dtype="float32" if args.fp32 else "float16",
                           external_word_embeddings=bool(
                               init_manifest.get("external", {}).get("text_backbone")))
    log = {"history": summary["history"], "best": best, "config": cfg.to_dict(),
           "recipe": recipe, "media": media, "utterances_with": has,
           "init_dev": {k: init_dev[k] for k in ("weighted_f1", "accuracy", "per_class_f1")},
           "ablation": {k: {x: s[x] for x in ("weighted_f1", "accuracy", "per_class_f1")}
                        for k, s in ablation.items()},
           "wall_minutes": wall}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    add_artefact(out, "train_log.json", "report")
    plot_confusion(best_scores["confusion"], labels, out / "dev_confusion.png",
                   f"{model.config.model_id} dev ({'+'.join(full)}): wF1 "
                   f"{best_scores['weighted_f1']} acc {best_scores['accuracy']}")
    add_artefact(out, "dev_confusion.png", "report")
    print(report(init_dev, ablation, variants, has, init_uses), file=sys.stderr)
    print(f"\nsaved {out}  trained modalities: {', '.join(trained)}  best dev: weighted F1 "
          f"{best_scores['weighted_f1']} (epoch {summary['best'].get('epoch')})  in {wall} min",
          file=sys.stderr)
    return 0


def report(init_dev: dict, ablation: dict, variants: dict, has: dict, init_uses) -> str:
    """The dev comparison, one line per model and input."""
    n = init_dev["n"]
    lines = [f"\ndev: {n} labelled utterances; utterances with audio "
             f"{has['dev']['audio']}, with a face {has['dev']['video']}",
             f"  {'model, inputs':38s} {'weighted F1':>11s} {'accuracy':>9s}",
             f"  {'init model (' + '+'.join(init_uses) + ')':38s} "
             f"{init_dev['weighted_f1']:11.2f} {init_dev['accuracy']:9.2f}"]
    for k, keep in variants.items():
        s = ablation[k]
        lines.append(f"  {'multimodal, ' + k + ' (' + '+'.join(keep) + ')':38s} "
                     f"{s['weighted_f1']:11.2f} {s['accuracy']:9.2f}")
    gain = ablation["all"]["weighted_f1"] - init_dev["weighted_f1"]
    if gain <= 0:
        lines.append(f"warning: the multimodal model does not beat the init model on dev "
                     f"({gain:+.2f}): check the media summary above before deploying it")
    return "\n".join(lines)
