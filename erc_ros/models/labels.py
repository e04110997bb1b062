"""Class names and their per-class valence/arousal: plain data, importable without torch
(the face-expression node and the ONNX face expert need them, not the ERC model)."""

MELD_LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")

#: Per-class (valence, arousal) in [-1, 1], after the NRC VAD lexicon values of the label
#: words (rescaled from [0, 1]); used to publish a continuous estimate next to the class.
DEFAULT_VALENCE_AROUSAL = {
    "neutral": (0.0, 0.0), "surprise": (0.4, 0.7), "fear": (-0.8, 0.6),
    "sadness": (-0.8, -0.4), "joy": (0.9, 0.5), "disgust": (-0.8, 0.3),
    "anger": (-0.7, 0.8),
    # EmoryNLP / IEMOCAP names
    "joyful": (0.9, 0.5), "mad": (-0.7, 0.8), "peaceful": (0.6, -0.6),
    "sad": (-0.8, -0.4), "powerful": (0.6, 0.5), "scared": (-0.8, 0.6),
    "happy": (0.9, 0.5), "excited": (0.7, 0.8), "frustrated": (-0.6, 0.5),
}
