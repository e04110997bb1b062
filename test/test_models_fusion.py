"""Fusion heads: shapes, masks, causality, gradients, a toy task (tiny configs)."""
from __future__ import annotations

import pytest
import torch

from _tolerances import network_bound
from erc_ros.models.fusion import HEADS, build_fusion

B, T, DT, DA, DV, C = 3, 6, 16, 8, 8, 7
D_MODEL = 16
# Rounding a head can add: input projection, q/k/v, scores, the softmax-weighted sum over T,
# output projection, a 2-layer feed-forward, gates and classifier: at most 8 layers, none
# wider than 4 * d_model (the feed-forward) terms.
DEPTH, WIDTH = 8, 4 * D_MODEL


def _close(a, b):
    """a == b up to the rounding of two evaluations of the head (test/_tolerances.py)."""
    bound = network_bound(DEPTH, WIDTH, b.detach().abs().max().item())
    assert (a - b).abs().max().item() <= bound


def _differ(a, b):
    """a and b differ by more than rounding could make them."""
    bound = network_bound(DEPTH, WIDTH, max(a.detach().abs().max().item(),
                                            b.detach().abs().max().item()))
    assert (a - b).abs().max().item() > bound


def _head(name, causal=True, seed=0):
    torch.manual_seed(seed)
    h = build_fusion(name, dict(text_dim=DT, audio_dim=DA, video_dim=DV, num_classes=C,
                                d_model=D_MODEL, num_heads=2, num_layers=1, causal=causal,
                                dropout=0.0, zero_init_av=False))
    with torch.no_grad():  # move every parameter off its init so each input path matters
        for p in h.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return h.eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    text, audio, video = (torch.randn(B, T, d, generator=g) for d in (DT, DA, DV))
    mm = torch.ones(B, T, 3, dtype=torch.bool)
    spk = torch.randint(0, 3, (B, T), generator=g)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[2, 4:] = True
    return text, audio, video, mm, spk, pad


@pytest.mark.parametrize("name", sorted(HEADS))
def test_shapes_and_weights(name):
    h = _head(name)
    x = _inputs()
    x[3][0, 1, 2] = False
    logits, w = h(*x)
    assert logits.shape == (B, T, C) and w.shape == (B, T, 3)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B, T))
    assert w[0, 1, 2] == 0  # an absent modality gets no weight


@pytest.mark.parametrize("name", sorted(HEADS))
def test_modality_mask_changes_output(name):
    h = _head(name)
    x = _inputs()
    base, _ = h(*x)
    mm = x[3].clone()
    mm[:, :, 1] = False  # no audio anywhere
    masked, _ = h(*x[:3], mm, *x[4:])
    _differ(base, masked)
    # Absent audio: its values no longer matter.
    audio2 = torch.randn_like(x[1])
    again, _ = h(x[0], audio2, x[2], mm, *x[4:])
    _close(again, masked)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_padding_is_ignored(name):
    h = _head(name)
    x = list(_inputs())
    base, _ = h(*x)
    for i in range(3):
        x[i] = x[i].clone()
        x[i][2, 4:] = 100.0  # garbage in the padded positions of dialogue 2
    out, _ = h(*x)
    _close(out[2, :4], base[2, :4])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_causal_means_the_future_cannot_change_the_past(name):
    h = _head(name, causal=True)
    x = list(_inputs())
    base, _ = h(*x)
    for i in range(3):
        x[i] = x[i].clone()
        x[i][:, 3:] = torch.randn_like(x[i][:, 3:])
    out, _ = h(*x)
    _close(out[:, :3], base[:, :3])
    if name in ("magt", "lpg"):  # heads that mix utterances do see the future when allowed
        hb = _head(name, causal=False)
        b1, _ = hb(*_inputs())
        b2, _ = hb(*x)
        _differ(b1[:, :3], b2[:, :3])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_backward_and_toy_task_loss_decreases(name):
    h = _head(name)
    h.train()
    g = torch.Generator().manual_seed(3)
    text = torch.randn(16, T, DT, generator=g)
    audio, video = torch.randn(16, T, DA, generator=g), torch.randn(16, T, DV, generator=g)
    y = (text[..., 0] > 0).long() + 2 * (audio[..., 0] > 0).long()  # 4 classes from 2 modalities
    mm = torch.ones(16, T, 3, dtype=torch.bool)
    spk = torch.zeros(16, T, dtype=torch.long)
    pad = torch.zeros(16, T, dtype=torch.bool)
    opt = torch.optim.Adam(h.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        logits, _ = h(text, audio, video, mm, spk, pad)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, C), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with_grad = [n for n, p in h.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) > 0.5 * len(list(h.parameters()))
    assert losses[-1] < 0.6 * losses[0]


def test_concat_untrained_audio_video_change_nothing():
    """The default model's concat head starts with zero audio/video projections: an untrained
    branch cannot disturb the text prediction."""
    torch.manual_seed(0)
    h = build_fusion("concat", dict(text_dim=DT, audio_dim=DA, video_dim=DV, num_classes=C)).eval()
    x = _inputs()
    a, _ = h(*x)
    mm = x[3].clone()
    mm[..., 1:] = False
    b, _ = h(*x[:3], mm, *x[4:])
    torch.testing.assert_close(a, b)
