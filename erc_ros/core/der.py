"""Diarization error rate (DER), frame-based, with the optimal speaker mapping.

DER = (missed speech + false alarm + speaker confusion) / reference speech, measured on a
10 ms grid. Hypothesis speakers are mapped one-to-one onto reference speakers so as to
maximise their overlap (Hungarian algorithm), as in NIST md-eval / pyannote.metrics.
``collar`` seconds around every reference boundary are not scored (0 = strict; 0.25 is
the usual NIST setting). Overlapped speech counts once per reference speaker.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

Segment = tuple[float, float, str]  # start, end, speaker


def _grid(segs: list[Segment], speakers: list[str], n: int, step: float) -> np.ndarray:
    m = np.zeros((len(speakers), n), bool)
    idx = {s: i for i, s in enumerate(speakers)}
    for a, b, s in segs:
        i0, i1 = max(0, int(round(a / step))), min(n, int(round(b / step)))
        if i1 > i0:
            m[idx[s], i0:i1] = True
    return m


def der(reference: Iterable[Segment], hypothesis: Iterable[Segment], collar: float = 0.0,
        step: float = 0.01) -> dict:
    """Returns ``{"der", "missed", "false_alarm", "confusion", "total", "mapping"}``
    (the three error terms and total are in seconds; ``der`` is a fraction)."""
    ref = [(float(a), float(b), str(s)) for a, b, s in reference if b > a]
    hyp = [(float(a), float(b), str(s)) for a, b, s in hypothesis if b > a]
    end = max([b for _, b, _ in ref + hyp], default=0.0)
    n = int(np.ceil(end / step)) + 1
    rs, hs = sorted({s for *_, s in ref}), sorted({s for *_, s in hyp})
    R, H = _grid(ref, rs, n, step), _grid(hyp, hs, n, step)
    scored = np.ones(n, bool)
    if collar > 0:
        c = int(round(collar / step))
        for a, b, _ in ref:
            for t in (a, b):
                i = int(round(t / step))
                scored[max(0, i - c):i + c] = False
    R, H = R[:, scored], H[:, scored]
    mapping = {}
    if rs and hs:
        overlap = R.astype(np.int32) @ H.T.astype(np.int32)  # ref x hyp frames in common
        ri, hi = linear_sum_assignment(-overlap)
        mapping = {hs[h]: rs[r] for r, h in zip(ri, hi) if overlap[r, h] > 0}
    n_ref, n_hyp = R.sum(axis=0), H.sum(axis=0)
    correct = np.zeros(R.shape[1], np.int32)
    for h, r in mapping.items():
        correct += (R[rs.index(r)] & H[hs.index(h)])
    missed = np.maximum(0, n_ref - n_hyp).sum()
    fa = np.maximum(0, n_hyp - n_ref).sum()
    conf = (np.minimum(n_ref, n_hyp) - correct).sum()
    total = n_ref.sum()
    return {"der": float((missed + fa + conf) / total) if total else 0.0,
            "missed": float(missed * step), "false_alarm": float(fa * step),
            "confusion": float(conf * step), "total": float(total * step),
            "collar": collar, "mapping": mapping}
