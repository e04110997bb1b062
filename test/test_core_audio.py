"""Audio buffer: decoding, resampling, stamps, gaps, overlaps, clock resets, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from erc_ros.core.audio_buffer import AudioBuffer, StreamResampler, decode_chunk
from erc_ros.core.errors import (AudioCodingError, AudioFormatError, AudioSizeError, InputError,
                                 SampleRateError, StampError)
from erc_ros.core.types import AudioChunk, AudioFormat
from erc_ros.tools import conversation_gen as cg



@pytest.fixture(scope="module")
def speech22k(tmp_path_factory):
    """Real speech at espeak-ng's native 22.05 kHz (not resampled)."""
    import subprocess

    path = tmp_path_factory.mktemp("speech") / "s.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+m3", "-w", str(path),
                    "The robot listens to the microphone, and the buffer keeps time."],
                   check=True, capture_output=True)
    x, sr = cg.read_wav(path)
    assert sr == 22050 and x.size > sr
    return x


def test_decode_every_sample_format():
    ref = np.array([0.0, 0.5, -0.5, 0.25, -1.0, 0.999], np.float32)
    cases = [("S16LE", "<i2", 32768), ("S16BE", ">i2", 32768), ("S32LE", "<i4", 2 ** 31),
             ("F32LE", "<f4", None), ("F32BE", ">f4", None), ("F64LE", "<f8", None)]
    for name, dt, scale in cases:
        raw = np.clip(np.round(ref * scale), -scale, scale - 1).astype(dt) if scale \
            else ref.astype(dt)
        got = decode_chunk(AudioChunk(0.0, raw.tobytes(), AudioFormat(16000, 1, name)))
        assert np.allclose(got, ref, atol=1e-4), name
    u8 = np.array([128, 192, 64, 255, 0], np.uint8)
    got = decode_chunk(AudioChunk(0.0, u8.tobytes(), AudioFormat(16000, 1, "U8")))
    assert np.allclose(got, [0, 0.5, -0.5, 127 / 128, -1.0])


def test_decode_interleaved_stereo_to_mono_and_arrays():
    left = np.linspace(-0.5, 0.5, 100).astype(np.float32)
    right = np.zeros(100, np.float32)
    inter = np.stack([left, right], axis=1).reshape(-1)
    fmt = AudioFormat(48000, 2, "F32LE")
    from_bytes = decode_chunk(AudioChunk(0.0, inter.astype("<f4").tobytes(), fmt))
    from_2d = decode_chunk(AudioChunk(0.0, np.stack([left, right], axis=1), fmt))
    assert np.allclose(from_bytes, left / 2) and np.allclose(from_2d, left / 2)
    i16 = decode_chunk(AudioChunk(0.0, (inter * 32767).astype(np.int16), AudioFormat(48000, 2)))
    assert np.allclose(i16, left / 2, atol=1e-4)


@pytest.mark.parametrize("fmt,data,err", [
    (AudioFormat(16000, 1, "S16LE", "mp3"), b"\xff\xfb\x90\x00" * 100, AudioCodingError),
    (AudioFormat(16000, 1, "S16LE", "opus"), b"\x00" * 100, AudioCodingError),
    (AudioFormat(16000, 1, "S16LE", "wave"), b"ID3\x04\x00" + b"\x00" * 99, AudioCodingError),
    (AudioFormat(16000, 1, "S16LE", "wave"), b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 92,
     AudioCodingError),
    (AudioFormat(16000, 1, "S16LE", "wave"), b"OggS" + b"\x00" * 100, AudioCodingError),
    (AudioFormat(16000, 1, "S24_32LE", "wave"), b"\x00" * 100, AudioFormatError),
    (AudioFormat(16000, 2, "S16LE", "wave"), b"\x00" * 6, AudioFormatError),
    (AudioFormat(16000, 1, "S16LE", "wave"), b"\x00" * 7, AudioFormatError),
    (AudioFormat(100, 1, "S16LE", "wave"), b"\x00" * 8, AudioFormatError),
    (AudioFormat(16000, 1, "F32LE", "wave"), np.array([0.1, np.nan], "<f4").tobytes(),
     AudioFormatError),
])
def test_bad_audio_is_refused_with_a_reason(fmt, data, err):
    buf = AudioBuffer()
    buf.push(AudioChunk(0.0, np.zeros(1600, np.int16).tobytes()))
    before = (buf.n_end, buf.epoch, buf.t_end)
    with pytest.raises(err) as ei:
        buf.push(AudioChunk(0.1, data, fmt))
    assert isinstance(ei.value, InputError) and isinstance(ei.value, ValueError)
    assert ei.value.reason in ("audio_coding", "audio_format") and str(ei.value)
    assert (buf.n_end, buf.epoch, buf.t_end) == before  # state untouched


@pytest.mark.parametrize("rate", [22050, 8000, 44100, 48000, 11025, 32000])
def test_streaming_resampler_equals_offline(rate):
    rng = np.random.default_rng(rate)
    x = (rng.standard_normal(rate * 2) * 0.2).astype(np.float32)
    r = StreamResampler(rate)
    parts, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 4000))
        parts.append(r.push(x[i:i + n]))
        i += n
    parts.append(r.flush())
    y = np.concatenate(parts)
    g = np.gcd(rate, 16000)
    ref = resample_poly(x, 16000 // g, rate // g)
    assert y.size == ref.size == 32000
    assert np.abs(y - ref).max() < 1e-5


def test_real_speech_22k_through_buffer_matches_offline(speech22k):
    """The research code's mistake was treating 22.05 kHz audio as 16 kHz; the buffer
    resamples by 320/441 exactly and keeps it on the stamp's time axis."""
    x = speech22k
    buf = AudioBuffer(capacity_s=30)
    fmt = AudioFormat(22050, 1, "S16LE")
    pcm = np.round(x * 32767).astype("<i2")
    rng = np.random.default_rng(0)
    i, t0 = 0, 100.0
    while i < pcm.size:
        n = int(rng.integers(200, 3000))
        buf.push(AudioChunk(t0 + i / 22050, pcm[i:i + n].tobytes(), fmt))
        i += n
    buf.flush()
    ref = resample_poly(pcm.astype(np.float32) / 32768, 320, 441)
    got = buf.read(t0, t0 + ref.size / 16000)
    assert abs(buf.t_end - (t0 + x.size / 22050)) < 1e-3
    assert np.abs(got - ref).max() < 1e-4


def test_pcm_that_starts_like_an_mpeg_frame_sync_is_still_pcm():
    pcm = np.array([-1025, 0, 1000, -5], "<i2").tobytes()  # bytes FF FB ...
    assert pcm[:2] == b"\xff\xfb"
    assert np.allclose(decode_chunk(AudioChunk(0.0, pcm)) * 32768, [-1025, 0, 1000, -5])


def _chunks(buf, t, n, value=0.1, rate=16000):
    buf.push(AudioChunk(t, np.full(n, value * 32767, np.int16).tobytes(), AudioFormat(rate)))


def test_gap_is_filled_with_silence_and_stamps_place_audio():
    buf = AudioBuffer()
    _chunks(buf, 10.0, 1600, 0.1)
    _chunks(buf, 10.6, 1600, 0.2)  # 0.5 s gap
    assert buf.counters["gaps"] == 1
    assert np.allclose(buf.read(10.15, 10.55), 0.0)
    assert np.allclose(buf.read(10.61, 10.69), 0.2, atol=1e-3)
    assert abs(buf.t_end - 10.7) < 1e-6


def test_jitter_is_ignored_overlap_trimmed_and_old_audio_refused():
    buf = AudioBuffer()
    for k in range(10):
        _chunks(buf, 5.0 + 0.1 * k + (0.02 if k % 2 else -0.01), 1600, 0.1)
    assert buf.counters["gaps"] == 0 and buf.counters["overlaps"] == 0
    assert abs(buf.t_end - 6.0 + 0.01) < 0.02
    end = buf.t_end
    _chunks(buf, end - 0.3, 8000, 0.3)  # 0.3 s overlap, 0.2 s new
    assert buf.counters["overlaps"] == 1
    assert abs(buf.t_end - (end + 0.2)) < 1e-3
    n_end = buf.n_end
    with pytest.raises(StampError) as ei:  # entirely older than what is buffered
        _chunks(buf, end - 0.5, 1600)
    assert ei.value.reason == "stamp" and buf.n_end == n_end
    with pytest.raises(StampError):
        buf.push(AudioChunk(float("nan"), b"\x00\x00" * 10))


def test_clock_reset_and_jump_start_new_epochs():
    seen = []
    buf = AudioBuffer(on_discontinuity=seen.append)
    _chunks(buf, 50.0, 16000)
    _chunks(buf, 3.0, 1600)  # bag loop: back to the start
    assert buf.epoch == 1 and seen == ["clock_reset"] and abs(buf.t_end - 3.1) < 1e-6
    _chunks(buf, 500.0, 1600)  # long forward jump
    assert buf.epoch == 2 and seen == ["clock_reset", "clock_jump"]
    assert abs(buf.t_start - 500.0) < 1e-6


def test_reversed_stamps_are_refused_not_buffered():
    buf = AudioBuffer()
    _chunks(buf, 20.0, 1600)
    refused = 0
    for k in range(1, 8):  # each chunk 100 ms earlier than the previous
        try:
            _chunks(buf, 20.0 - 0.1 * k, 1600)
        except StampError:
            refused += 1
    assert refused >= 6
    assert buf.epoch == 0 and abs(buf.t_end - 20.1) < 1e-6


def test_empty_and_giant_chunks():
    buf = AudioBuffer(max_chunk_s=30)
    buf.push(AudioChunk(0.0, b""))
    buf.push(AudioChunk(0.0, np.zeros(0, np.float32), AudioFormat(16000, 1, "F32LE")))
    assert buf.counters["empty_chunks"] == 2 and buf.epoch == -1
    with pytest.raises(AudioSizeError) as ei:
        buf.push(AudioChunk(0.0, np.zeros(16000 * 45, np.int16)))
    assert ei.value.reason == "audio_size" and buf.n_end == 0
    # A large chunk within the limit is fine and the ring keeps only its capacity.
    small = AudioBuffer(capacity_s=5)
    small.push(AudioChunk(0.0, np.full(16000 * 20, 1000, np.int16)))
    assert small.n_end - small.n_start == 5 * 16000
    assert np.allclose(small.read(0.0, 1.0), 0.0)  # no longer held: zeros, not garbage
    assert np.allclose(small.read(19.0, 20.0), 1000 / 32768)


def test_wrong_declared_sample_rate_is_detected(speech22k):
    """22.05 kHz audio declared as 16 kHz with true stamps: refused once the stamps show it."""
    pcm = np.round(speech22k * 32767).astype("<i2")
    buf = AudioBuffer()
    wrong = AudioFormat(16000, 1, "S16LE")
    n = 2205  # 100 ms of the real rate
    errors = []
    for k, i in enumerate(range(0, pcm.size - n, n)):
        try:
            buf.push(AudioChunk(7.0 + k * 0.1, pcm[i:i + n].tobytes(), wrong))
        except InputError as e:
            errors.append(e)
    rate_errors = [e for e in errors if isinstance(e, SampleRateError)]
    assert rate_errors, "a 1.38x rate mismatch must be reported"
    first = errors.index(rate_errors[0])
    assert first <= 8 and all(isinstance(e, SampleRateError) for e in errors[first:])
    assert rate_errors[0].reason == "audio_rate" and "~22" in str(rate_errors[0])
    assert buf.counters["seconds_in"] < 1.2  # what got through before it knew is bounded
    # Declared correctly, the same stream passes.
    ok = AudioBuffer()
    for k, i in enumerate(range(0, pcm.size - n, n)):
        ok.push(AudioChunk(7.0 + k * 0.1, pcm[i:i + n].tobytes(), AudioFormat(22050)))
    assert ok.counters["chunks"] == len(range(0, pcm.size - n, n))
