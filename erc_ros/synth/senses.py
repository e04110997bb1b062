"""Conversations whose speakers show a face of their turn's emotion (``bench-senses``).

:class:`FacedConversation` is a :class:`~erc_ros.synth.conversation.GeneratedConversation`
with one face per labelled turn instead of one per speaker: each speaker has a place in the
640x480 frame, and while a turn is spoken its face (a labelled face-corpus image,
:func:`~erc_ros.datasets.fer2013.framed_face`) is shown at its speaker's place; a speaker
who is not talking shows the face of their last turn, or nothing before their first. The
face of the person talking moves a little with their voice's loudness (a shift of a pixel or
two, as a head moves while talking), so the core's audio-visual choice of the speaker's face
has the cue it looks for in a live camera; the expression itself is never painted over.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from erc_ros.synth.conversation import GeneratedConversation, Turn

#: The side of a face in the frame, pixels, drawn per turn: a person at a robot's distances.
SIDES = (60, 120)
#: The speakers' places (centre x, centre y) as fractions of the frame, in order of speaking.
PLACES = ((0.3, 0.45), (0.7, 0.45), (0.5, 0.4), (0.15, 0.5), (0.85, 0.5))
#: How far (pixels) the talking face moves with its voice.
MOTION_PX = 2


@dataclass
class TurnFace:
    """The face shown during one turn: its image (RGB, border included) and the face's
    own side in pixels (without the border)."""
    image: np.ndarray
    side: int
    label: str = ""
    index: int = -1  # the image's index in its corpus


@dataclass
class FacedConversation(GeneratedConversation):
    """A conversation with a face per labelled turn (module doc). ``turn_faces``: utterance
    id -> :class:`TurnFace`; ``places``: speaker -> the centre of their face, pixels."""
    turn_faces: dict[str, TurnFace] = field(default_factory=dict)
    places: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, conv: GeneratedConversation,
           turn_faces: dict[str, TurnFace]) -> "FacedConversation":
        """``conv`` (built without speaker faces) with ``turn_faces``; the speakers get
        :data:`PLACES` in their order of speaking."""
        unknown = set(turn_faces) - {t.utterance_id for t in conv.turns}
        if unknown:
            raise ValueError(f"faces for turns the conversation does not have: "
                             f"{sorted(unknown)[:5]}")
        spk = [s for s in conv.speakers
               if any(t.utterance_id in turn_faces for t in conv.turns if t.speaker == s)]
        if len(spk) > len(PLACES):
            raise ValueError(f"{len(spk)} speakers with faces: at most {len(PLACES)} fit")
        places = {s: (int(px * conv.width), int(py * conv.height))
                  for s, (px, py) in zip(spk, PLACES)}
        return cls(conv.audio, conv.sample_rate, conv.turns, {}, conv.width, conv.height,
                   conv.name, turn_faces=turn_faces, places=places)

    def face_of(self, speaker: str, t: float) -> tuple[Optional[Turn], Optional[TurnFace]]:
        """The turn (and face) ``speaker`` shows at ``t``: their last turn with a face that
        has started by then; (None, None) before their first."""
        last: tuple[Optional[Turn], Optional[TurnFace]] = (None, None)
        for turn in self.turns:  # in order of start
            if turn.start > t:
                break
            if turn.speaker == speaker and turn.utterance_id in self.turn_faces:
                last = (turn, self.turn_faces[turn.utterance_id])
        return last

    def face_box(self, speaker: str, t: float) -> Optional[tuple[int, int, int, int]]:
        """(x, y, w, h) of the face (without its border) that ``speaker`` shows at ``t``,
        as :meth:`frame_at` draws it (None: no face)."""
        turn, face = self.face_of(speaker, t)
        if face is None:
            return None
        x, y = self._corner(speaker, turn, face, t)
        pad = (face.image.shape[1] - face.side) // 2
        return x + pad, y + pad, face.side, face.side

    def _corner(self, speaker: str, turn: Turn, face: TurnFace, t: float) -> tuple[int, int]:
        cx, cy = self.places[speaker]
        total = face.image.shape[1]
        x, y = cx - total // 2, cy - total // 2
        if turn.start <= t < turn.end:  # talking: the head moves with the voice
            _, _, _, env = self._base()
            i = int(np.clip(t * self.sample_rate, 0, env.size - 1))
            if env[i] * 2.5 > 0.05:
                k = int(t * 15)
                x += MOTION_PX * ((k % 3) - 1)
                y += MOTION_PX * (((k // 3) % 3) - 1)
        return x, y

    def frame_at(self, t: float) -> np.ndarray:
        """The 640x480 RGB camera frame at ``t``: each speaker's current face at their place
        (:meth:`face_of`), light sensor noise."""
        base, _, noise, _ = self._base()
        img = base.copy()
        H, W = img.shape[:2]
        for speaker in self.places:
            turn, face = self.face_of(speaker, t)
            if face is None:
                continue
            x, y = self._corner(speaker, turn, face, t)
            s = face.image.shape[0]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, W), min(y + s, H)
            if x1 > x0 and y1 > y0:
                img[y0:y1, x0:x1] = face.image[y0 - y:y1 - y, x0 - x:x1 - x]
        k = int(t * 15) % len(noise)
        return np.clip(img.astype(np.int16) + noise[k], 0, 255).astype(np.uint8)
