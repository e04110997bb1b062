"""Clip reading (decode, faces, VAD, d-vector) of a generated MELD.Raw-like set (the one
test/test_training_multimodal.py writes: H.264/AAC clips, espeak-ng voices, scikit-image
faces): one process against --workers 2 on a local Ray, fresh caches; features compared.

    .venv/bin/python tools/bench/media_ray.py [FOLDER]   (default runs/ray/media; made once)
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from erc_ros import process
from erc_ros.datasets import meld
from erc_ros.runtime import machine
from erc_ros.training.media import MediaReader, prefetch_on_ray

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ray/media")
process.configure(torch_threads=2)
if not (root / "dev_sent_emo.csv").is_file():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "test"))
    import test_training_multimodal as t
    root.mkdir(parents=True, exist_ok=True)
    t.write_meld(root, "train", "train_splits", 6, t._face_images(0), t._voices(0))
    t.write_meld(root, "dev", "dev_splits_complete", 2, t._face_images(1), t._voices(1))
m = machine.describe(2)
print("machine:", machine.line(m))
ds = meld.load_meld(root / "train_sent_emo.csv", root / "train_splits") + \
    meld.load_meld(root / "dev_sent_emo.csv", root / "dev_splits_complete")
tmp = Path(tempfile.mkdtemp())
t = time.perf_counter()
here = MediaReader(cache_dir=tmp / "a", progress=False)
a = [here.read_dialogue(d) for d in ds]
t_here = time.perf_counter() - t
t = time.perf_counter()
r = MediaReader(cache_dir=tmp / "b", progress=False)
counts = prefetch_on_ray(r, ds, workers=2)
b = [r.read_dialogue(d) for d in ds]
t_ray = time.perf_counter() - t
flat_a, flat_b = sum(a, []), sum(b, [])
same = all(np.array_equal(x.audio, y.audio) and len(x.faces) == len(y.faces)
           and all(np.array_equal(p, q) for p, q in zip(x.faces, y.faces)) for x, y in zip(flat_a, flat_b))
emb = max(float(np.abs(x.speaker_embedding - y.speaker_embedding).max()) for x, y in zip(flat_a, flat_b))
print(f"{len(flat_a)} clips: one process {t_here:.1f} s; Ray --workers 2 {t_ray:.1f} s "
      f"(Ray start {counts['ray_start_s']} s, read back from the cache {r.counters['from_cache']}); "
      f"audio and crops identical: {same}; d-vector max |diff| {emb:.2e}")
