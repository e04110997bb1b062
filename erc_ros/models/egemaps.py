"""eGeMAPS v02 functionals: the 88 standard affective-computing acoustic parameters of a clip
(Eyben et al. 2016), the packaged audio features (``AudioFeatureConfig.kind="egemaps"``).

Computed by afx-audio (MIT, numpy/scipy, no weights), a re-implementation of openSMILE's
eGeMAPSv02 configuration with openSMILE's feature names and order; openSMILE itself is under a
non-commercial licence and is not a dependency. Their agreement on real speech is measured by
``python -m erc_ros egemaps-agreement`` (docs/audio.md).

The raw functionals span very different scales (jitter ~0.03, F1 frequency ~600 Hz, equivalent
sound level ~-30 dBp, MFCC stddevNorm any sign and size when the MFCC's mean is near 0), so
:func:`egemaps_features` maps each to ``asinh((x - centre) / scale)``: standardised by fixed
constants (:data:`REFERENCE`, median and robust spread over speech, derived once by
``python -m erc_ros egemaps-agreement --derive-reference``), then log-compressed in both tails,
so an outlier cannot swamp the encoder's LayerNorm. The constants belong to the feature kind:
changing them (or afx-audio's algorithm) would need a new kind name, since trained models
depend on them. Pure numpy (no torch): the runtime and the trainer call the same function.
"""
from __future__ import annotations

import numpy as np

from erc_ros.core.types import SAMPLE_RATE

_CONTOUR = ("amean", "stddevNorm", "percentile20.0", "percentile50.0", "percentile80.0",
            "pctlrange0-2", "meanRisingSlope", "stddevRisingSlope", "meanFallingSlope",
            "stddevFallingSlope")
_VOICED = ("jitterLocal", "shimmerLocaldB", "HNRdBACF", "logRelF0-H1-H2", "logRelF0-H1-A3",
           "F1frequency", "F1bandwidth", "F1amplitudeLogRelF0", "F2frequency", "F2bandwidth",
           "F2amplitudeLogRelF0", "F3frequency", "F3bandwidth", "F3amplitudeLogRelF0",
           "alphaRatioV", "hammarbergIndexV", "slopeV0-500", "slopeV500-1500", "spectralFluxV",
           "mfcc1V", "mfcc2V", "mfcc3V", "mfcc4V")
_UNVOICED = ("alphaRatioUV", "hammarbergIndexUV", "slopeUV0-500", "slopeUV500-1500",
             "spectralFluxUV")

#: The 88 eGeMAPSv02 functionals, in openSMILE's (and afx-audio's) order and spelling.
EGEMAPS_NAMES: tuple[str, ...] = (
    *(f"F0semitoneFrom27.5Hz_sma3nz_{f}" for f in _CONTOUR),
    *(f"loudness_sma3_{f}" for f in _CONTOUR),
    *(f"{d}_sma3_{f}" for d in ("spectralFlux", "mfcc1", "mfcc2", "mfcc3", "mfcc4")
      for f in ("amean", "stddevNorm")),
    *(f"{d}_sma3nz_{f}" for d in _VOICED for f in ("amean", "stddevNorm")),
    *(f"{d}_sma3nz_amean" for d in _UNVOICED),
    "loudnessPeaksPerSec", "VoicedSegmentsPerSec", "MeanVoicedSegmentLengthSec",
    "StddevVoicedSegmentLengthSec", "MeanUnvoicedSegmentLength", "StddevUnvoicedSegmentLength",
    "equivalentSoundLevel_dBp",
)
EGEMAPS_DIM = len(EGEMAPS_NAMES)  # 88

#: Shortest clip analysed (one 20 ms frame); shorter ones get the all-zero feature vector.
MIN_SAMPLES = SAMPLE_RATE // 50
#: Normalised features are clipped to +-CLIP (asinh(CLIP) ~ 1e4 spreads from the centre).
CLIP = 10.0

#: name -> (centre, scale) of the raw functional over speech (see the module docstring): median
#: and IQR / 1.349 over 110 clips (30 espeak-ng sentences in 10 voices, 40 + 40 real prompts of
#: Debian's asterisk en/fr speakers, 8 kHz up-sampled), 3 significant digits. They set the scale
#: only; a trained model's encoder adapts to its corpus' spread.
REFERENCE: dict[str, tuple[float, float]] = {
    "F0semitoneFrom27.5Hz_sma3nz_amean": (33.9, 1.15),
    "F0semitoneFrom27.5Hz_sma3nz_stddevNorm": (0.113, 0.0322),
    "F0semitoneFrom27.5Hz_sma3nz_percentile20.0": (30.4, 1.88),
    "F0semitoneFrom27.5Hz_sma3nz_percentile50.0": (34.2, 1.58),
    "F0semitoneFrom27.5Hz_sma3nz_percentile80.0": (37.1, 1.77),
    "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2": (5.76, 3.41),
    "F0semitoneFrom27.5Hz_sma3nz_meanRisingSlope": (52.4, 56.1),
    "F0semitoneFrom27.5Hz_sma3nz_stddevRisingSlope": (35.1, 66.7),
    "F0semitoneFrom27.5Hz_sma3nz_meanFallingSlope": (30.0, 15.2),
    "F0semitoneFrom27.5Hz_sma3nz_stddevFallingSlope": (27.3, 17.6),
    "loudness_sma3_amean": (0.685, 0.138),
    "loudness_sma3_stddevNorm": (0.719, 0.0746),
    "loudness_sma3_percentile20.0": (0.216, 0.0675),
    "loudness_sma3_percentile50.0": (0.61, 0.178),
    "loudness_sma3_percentile80.0": (1.19, 0.216),
    "loudness_sma3_pctlrange0-2": (0.976, 0.187),
    "loudness_sma3_meanRisingSlope": (12.6, 2.88),
    "loudness_sma3_stddevRisingSlope": (6.24, 1.71),
    "loudness_sma3_meanFallingSlope": (9.69, 3.34),
    "loudness_sma3_stddevFallingSlope": (5.92, 2.09),
    "spectralFlux_sma3_amean": (0.369, 0.0648),
    "spectralFlux_sma3_stddevNorm": (0.865, 0.12),
    "mfcc1_sma3_amean": (39.5, 11.8),
    "mfcc1_sma3_stddevNorm": (0.247, 0.271),
    "mfcc2_sma3_amean": (-10.5, 9.2),
    "mfcc2_sma3_stddevNorm": (-1.39, 0.937),
    "mfcc3_sma3_amean": (22.8, 5.19),
    "mfcc3_sma3_stddevNorm": (0.85, 0.268),
    "mfcc4_sma3_amean": (-11.1, 4.19),
    "mfcc4_sma3_stddevNorm": (-1.44, 0.565),
    "jitterLocal_sma3nz_amean": (0.0193, 0.00398),
    "jitterLocal_sma3nz_stddevNorm": (0.758, 0.18),
    "shimmerLocaldB_sma3nz_amean": (1.15, 0.184),
    "shimmerLocaldB_sma3nz_stddevNorm": (0.702, 0.136),
    "HNRdBACF_sma3nz_amean": (8.7, 1.01),
    "HNRdBACF_sma3nz_stddevNorm": (0.381, 0.0863),
    "logRelF0-H1-H2_sma3nz_amean": (9.67, 2.89),
    "logRelF0-H1-H2_sma3nz_stddevNorm": (0.776, 0.221),
    "logRelF0-H1-A3_sma3nz_amean": (23.2, 4.12),
    "logRelF0-H1-A3_sma3nz_stddevNorm": (0.441, 0.115),
    "F1frequency_sma3nz_amean": (359.0, 45.5),
    "F1frequency_sma3nz_stddevNorm": (0.335, 0.0701),
    "F1bandwidth_sma3nz_amean": (160.0, 45.1),
    "F1bandwidth_sma3nz_stddevNorm": (0.807, 0.137),
    "F1amplitudeLogRelF0_sma3nz_amean": (0.453, 2.25),
    "F1amplitudeLogRelF0_sma3nz_stddevNorm": (0.539, 6.17),
    "F2frequency_sma3nz_amean": (1300.0, 219.0),
    "F2frequency_sma3nz_stddevNorm": (0.383, 0.0867),
    "F2bandwidth_sma3nz_amean": (306.0, 82.5),
    "F2bandwidth_sma3nz_stddevNorm": (0.561, 0.118),
    "F2amplitudeLogRelF0_sma3nz_amean": (-15.5, 3.19),
    "F2amplitudeLogRelF0_sma3nz_stddevNorm": (-0.597, 0.133),
    "F3frequency_sma3nz_amean": (2510.0, 207.0),
    "F3frequency_sma3nz_stddevNorm": (0.183, 0.0675),
    "F3bandwidth_sma3nz_amean": (283.0, 41.2),
    "F3bandwidth_sma3nz_stddevNorm": (0.616, 0.0724),
    "F3amplitudeLogRelF0_sma3nz_amean": (-26.1, 6.31),
    "F3amplitudeLogRelF0_sma3nz_stddevNorm": (-0.394, 0.0879),
    "alphaRatioV_sma3nz_amean": (-15.4, 3.88),
    "alphaRatioV_sma3nz_stddevNorm": (-0.548, 0.102),
    "hammarbergIndexV_sma3nz_amean": (25.5, 5.21),
    "hammarbergIndexV_sma3nz_stddevNorm": (0.408, 0.0573),
    "slopeV0-500_sma3nz_amean": (0.0622, 0.0106),
    "slopeV0-500_sma3nz_stddevNorm": (0.34, 0.111),
    "slopeV500-1500_sma3nz_amean": (-0.0185, 0.00378),
    "slopeV500-1500_sma3nz_stddevNorm": (-0.85, 0.198),
    "spectralFluxV_sma3nz_amean": (0.441, 0.0906),
    "spectralFluxV_sma3nz_stddevNorm": (0.71, 0.0996),
    "mfcc1V_sma3nz_amean": (43.1, 4.78),
    "mfcc1V_sma3nz_stddevNorm": (0.185, 0.123),
    "mfcc2V_sma3nz_amean": (-5.48, 7.22),
    "mfcc2V_sma3nz_stddevNorm": (-1.71, 2.17),
    "mfcc3V_sma3nz_amean": (21.3, 6.31),
    "mfcc3V_sma3nz_stddevNorm": (0.856, 0.269),
    "mfcc4V_sma3nz_amean": (-9.72, 5.51),
    "mfcc4V_sma3nz_stddevNorm": (-1.53, 0.696),
    "alphaRatioUV_sma3nz_amean": (-3.99, 3.12),
    "hammarbergIndexUV_sma3nz_amean": (13.0, 3.57),
    "slopeUV0-500_sma3nz_amean": (0.0583, 0.0195),
    "slopeUV500-1500_sma3nz_amean": (0.00727, 0.00721),
    "spectralFluxUV_sma3nz_amean": (0.132, 0.088),
    "loudnessPeaksPerSec": (4.26, 0.7),
    "VoicedSegmentsPerSec": (2.26, 0.668),
    "MeanVoicedSegmentLengthSec": (0.313, 0.141),
    "StddevVoicedSegmentLengthSec": (0.185, 0.0902),
    "MeanUnvoicedSegmentLength": (0.09, 0.0358),
    "StddevUnvoicedSegmentLength": (0.0561, 0.0277),
    "equivalentSoundLevel_dBp": (-20.1, 2.27),
}

_CHECKED = False


def _afx():
    global _CHECKED
    try:
        import afx_audio
    except ImportError as e:  # pragma: no cover - a requirement; the message says which
        raise ImportError("eGeMAPS audio features need afx-audio (requirements.txt: "
                          "pip install afx-audio==0.3.1)") from e
    if not _CHECKED:
        if tuple(afx_audio.EGEMAPS_NAMES) != EGEMAPS_NAMES:
            raise RuntimeError(f"afx-audio {afx_audio.__version__} names its eGeMAPS "
                               "functionals differently from erc_ros.models.egemaps")
        _CHECKED = True
    return afx_audio


def egemaps_functionals(wav: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The 88 raw functionals (float64, :data:`EGEMAPS_NAMES` order) of a mono clip, finite:
    non-finite samples count as 0, and a non-finite functional (none seen so far) becomes 0."""
    x = np.nan_to_num(np.asarray(wav, np.float64).reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    if x.size < MIN_SAMPLES * sr // SAMPLE_RATE:
        x = np.concatenate([x, np.zeros(MIN_SAMPLES * sr // SAMPLE_RATE - x.size)])
    values = _afx().egemaps(x, sr)
    out = np.fromiter(values.values(), np.float64, EGEMAPS_DIM)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


_CENTRE = np.array([REFERENCE.get(n, (0.0, 1.0))[0] for n in EGEMAPS_NAMES])
_SCALE = np.array([REFERENCE.get(n, (0.0, 1.0))[1] for n in EGEMAPS_NAMES])


def normalise(raw: np.ndarray) -> np.ndarray:
    """``asinh((raw - centre) / scale)`` clipped to +-:data:`CLIP`, float32 (any leading shape)."""
    z = np.arcsinh((np.asarray(raw, np.float64) - _CENTRE) / _SCALE)
    return np.clip(np.nan_to_num(z, nan=0.0), -CLIP, CLIP).astype(np.float32)


def egemaps_features(wav: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The 88 normalised eGeMAPS functionals of a mono clip, float32, finite. Clips shorter
    than one 20 ms frame (empty included) get zeros: "no evidence" rather than the features
    of 20 ms of silence."""
    if np.asarray(wav).size < MIN_SAMPLES * sr // SAMPLE_RATE:
        return np.zeros(EGEMAPS_DIM, np.float32)
    return normalise(egemaps_functionals(wav, sr))
