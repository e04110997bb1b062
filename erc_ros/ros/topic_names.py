"""Person ids -> ROS topic name tokens (``/humans/voices/<token>/expression``).

ROS4HRI ids and enrolled names are free text ("José", "名前", a 10 kB string); a ROS topic
token is ASCII letters, digits and ``_``, must not start with a digit, and is kept short
here. :func:`id_token` maps every id onto such a token:

- an id that already is a valid token (``[A-Za-z][A-Za-z0-9_]*``, no repeated or
  trailing ``_`` (ROS name rules), at most :data:`MAX_TOKEN` characters, and not ending in
  the hashed suffix below) is its own token, so ROS4HRI's usual ids
  (``anonymous_speaker_1``, ``a5f3``) keep their topics;
- any other id becomes an ASCII transliteration (accents stripped, the rest ``_``) cut to
  a prefix, then ``_x`` and 12 hex digits of its sha256. No id used as it is ends that
  way, so no such id can equal a hashed token, and two different ids share a hashed token
  only on a 48-bit hash collision.

No rclpy here: the core of it is tested without ROS.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

#: Longest token (ROS allows far more; a topic segment this long is already unreadable).
MAX_TOKEN = 64
_VALID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_HASH_HEX = 12
_HASHED = re.compile(r"_x[0-9a-f]{%d}" % _HASH_HEX)


def is_topic_token(s: str) -> bool:
    """True when ``s`` is one token of a topic name (ASCII letters, digits, ``_``, not
    starting with a digit) of at most :data:`MAX_TOKEN` characters."""
    return len(s) <= MAX_TOKEN and _VALID.fullmatch(s) is not None


def is_token(s: str) -> bool:
    """True when ``s`` is its own token in :func:`id_token` (see the module docstring)."""
    return (is_topic_token(s) and "__" not in s and not s.endswith("_")
            and _HASHED.fullmatch(s[-(_HASH_HEX + 2):]) is None)


def id_token(person_id: str) -> str:
    """The topic token of ``person_id`` (deterministic, collision-free as documented)."""
    if is_token(person_id):
        return person_id
    ascii_text = unicodedata.normalize("NFKD", person_id).encode("ascii", "ignore").decode()
    prefix = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]", "_", ascii_text)).strip("_")
    if not prefix or not prefix[0].isalpha():
        prefix = ("id_" + prefix).rstrip("_")
    prefix = prefix[:MAX_TOKEN - _HASH_HEX - 3].rstrip("_")
    digest = hashlib.sha256(person_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    return f"{prefix}_x{digest}"
