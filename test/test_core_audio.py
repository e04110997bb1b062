"""Audio buffer: decoding, resampling, stamps, gaps, overlaps, clock resets, bad input."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy.signal import resample_poly

from erc_ros.core import audio_buffer
from erc_ros.core.audio_buffer import (MAX_FILTER_TAPS, AudioBuffer, StreamResampler,
                                       decode_chunk, resample_ratio)
from erc_ros.core.config import AudioConfig
from erc_ros.core.errors import (AudioCodingError, AudioFormatError, AudioSizeError, InputError,
                                 SampleRateError, StampError)
from erc_ros.core.types import AudioChunk, AudioFormat
from erc_ros.synth.speech import read_wav
@pytest.fixture(scope="module")
def speech22k(tmp_path_factory):
    """Real speech at espeak-ng's native 22.05 kHz (not resampled)."""
    import subprocess

    path = tmp_path_factory.mktemp("speech") / "s.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+m3", "-w", str(path),
                    "The robot listens to the microphone, and the buffer keeps time."],
                   check=True, capture_output=True)
    x, sr = read_wav(path)
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
    buf = AudioBuffer(AudioConfig(capacity_seconds=30))
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
    buf = AudioBuffer(AudioConfig(max_chunk_seconds=30))
    buf.push(AudioChunk(0.0, b""))
    buf.push(AudioChunk(0.0, np.zeros(0, np.float32), AudioFormat(16000, 1, "F32LE")))
    assert buf.counters["empty_chunks"] == 2 and buf.epoch == -1
    with pytest.raises(AudioSizeError) as ei:
        buf.push(AudioChunk(0.0, np.zeros(16000 * 45, np.int16)))
    assert ei.value.reason == "audio_size" and buf.n_end == 0
    # A large chunk within the limit is fine and the ring keeps only its capacity.
    small = AudioBuffer(AudioConfig(capacity_seconds=5))
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


def test_lost_chunks_are_gaps_not_a_wrong_rate(speech22k):
    """A correctly declared stream that loses a third of its chunks, in bursts too (a loaded
    subscriber at 4x lost them, and the stamps then ran 1.6x ahead of the audio): the losses
    are filled as gaps and nothing after them is refused as a wrong sample rate."""
    pcm = np.round(speech22k * 32767).astype("<i2")
    n = 2205  # 100 ms
    rng = np.random.default_rng(0)
    lost = rng.random(pcm.size // n) < 0.33
    lost[10:14] = True  # a burst
    buf = AudioBuffer()
    for k, i in enumerate(range(0, pcm.size - n, n)):
        if not lost[k]:
            buf.push(AudioChunk(7.0 + k * 0.1, pcm[i:i + n].tobytes(), AudioFormat(22050)))
    assert buf.counters["gaps"] >= 5 and buf.epoch == 0
    assert buf.counters["chunks"] == int((~lost[:len(range(0, pcm.size - n, n))]).sum())


@pytest.fixture
def designed_taps(monkeypatch):
    """Every FIR filter designed (its tap count), by the resampler or by resample_poly (which
    designs one per call): a spy around the real scipy firwin."""
    import scipy.signal._signaltools as signaltools

    taps = []

    def spying(real):
        def firwin(numtaps, *args, **kwargs):
            taps.append(int(numtaps))
            return real(numtaps, *args, **kwargs)
        return firwin

    monkeypatch.setattr(signaltools, "firwin", spying(signaltools.firwin))
    if hasattr(audio_buffer, "firwin"):
        monkeypatch.setattr(audio_buffer, "firwin", spying(audio_buffer.firwin))
    cache = getattr(audio_buffer, "polyphase_filter", None)
    if cache is not None:
        cache.cache_clear()
    return taps


@pytest.mark.parametrize("rate", [383999, 16001, 44100, 11025])
def test_resampling_filter_designed_once_per_format_and_bounded(rate, designed_taps):
    """383999 Hz asked resample_poly for a 7.7-million-tap filter on every chunk (732 ms per
    100 ms chunk), 16001 Hz for 320,021 taps. Now: at most one design per format, never
    longer than MAX_FILTER_TAPS, so the per-chunk cost is bounded whatever the rate."""
    fmt = AudioFormat(rate, 1, "F32LE")
    n = rate // 10
    for stream in range(2):  # a second stream of the same format designs nothing
        buf = AudioBuffer()
        for k in range(3):
            buf.push(AudioChunk(50.0 + k * n / rate, np.zeros(n, np.float32), fmt))
        buf.flush()
        assert len(designed_taps) <= 1, designed_taps
    assert sum(designed_taps) <= MAX_FILTER_TAPS
    assert StreamResampler(rate).taps <= MAX_FILTER_TAPS


def test_every_accepted_rate_has_a_bounded_filter_and_ratio_error():
    """Over the accepted rates (4000..384000 Hz): the filter never exceeds MAX_FILTER_TAPS,
    a 16 kHz sample never costs more than 481 multiply-adds (20 * 24 + 1: the ratio is at
    least 1/24), the standard rates are exact and the others off by < 0.081 %."""
    rng = np.random.default_rng(0)
    standard = [4000, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200,
                96000, 176400, 192000, 352800, 384000]
    rates = standard + [16001, 15999, 383999, 44101, 4001] + \
        [int(r) for r in rng.integers(4000, 384001, 3000)]
    for rate in rates:
        ratio = resample_ratio(rate)
        taps = 20 * max(ratio.numerator, ratio.denominator) + 1
        assert taps <= MAX_FILTER_TAPS, rate
        assert taps / ratio.numerator <= 20 * 24 + 1, rate
        assert abs(float(ratio) * rate / 16000 - 1) < 0.00081, rate
        if rate in standard:
            assert ratio == Fraction(16000, rate), rate


@pytest.mark.parametrize("rate", [44100, 16001, 383999])
def test_sine_resampled_to_16k_keeps_frequency_length_and_time(rate):
    """10 s of a 440 Hz sine through the buffer in 100 ms chunks, stamped by the declared
    rate: 16 kHz output of the right length, sample j equal to the sine at its true time
    t0 + j / 16000 (an approximate ratio that drifted, e.g. 16001 Hz read as 16000 Hz,
    would be 0.6 ms = 1.7 rad of 440 Hz off by the end)."""
    f, amp, dur, t0 = 440.0, 0.5, 10.0, 30.0
    n = int(rate * dur)
    x = (amp * np.sin(2 * np.pi * f * np.arange(n) / rate)).astype(np.float32)
    buf = AudioBuffer()
    fmt, c = AudioFormat(rate, 1, "F32LE"), rate // 10
    for i in range(0, n, c):
        buf.push(AudioChunk(t0 + i / rate, x[i:i + c], fmt))
    buf.flush()
    n16 = -(-n * 16000 // rate)  # ceil: what offline resample_poly gives
    assert buf.n_end == n16 and buf.t_end == pytest.approx(t0 + n16 / 16000, abs=1e-9)
    y = buf.read(t0, buf.t_end)
    ideal = amp * np.sin(2 * np.pi * f * np.arange(n16) / 16000)
    # Tolerance: a sample at most half a 16 kHz sample from its true time (the nearest
    # sample of an approximate ratio; 0 for an exact one) is at most amp * pi * f / 16000
    # off, the Kaiser (beta 5, ~54 dB) filter's passband ripple at most 0.2 %, float32
    # rounding ~1e-6. The first and last 0.1 s (the filter's ramp in and out, <= 10
    # samples) are left out.
    half_sample = 0.0 if StreamResampler(rate).exact else np.pi * f / 16000
    tol = amp * (half_sample * 1.001 + 0.002) + 1e-5
    err = np.abs(y - ideal)[1600:-1600]
    assert err.max() <= tol, (err.max(), tol)
    assert buf.counters["approx_resample_segments"] == (0 if StreamResampler(rate).exact
                                                          else 1)


@pytest.mark.parametrize("rate", [16001, 15999])
def test_approximate_ratio_time_error_is_bounded_and_does_not_grow(rate):
    """16001 Hz runs through the ratio 1/1 with a sample skipped or repeated now and then.
    With a ramp as input each output names the input sample it came from: over 5 minutes
    in random chunk sizes every output is within half an output sample of its true time,
    and the count follows the declared rate while streaming and after flush."""
    n = rate * 300
    x = np.arange(n, dtype=np.float32)  # exact in float32 below 2**24
    r = StreamResampler(rate)
    assert not r.exact and r.up == r.down == 1 and r.taps == 0
    rng = np.random.default_rng(rate)
    parts, i = [], 0
    while i < n:
        k = int(rng.integers(1, 8000))
        parts.append(r.push(x[i:i + k]))
        i += k
        expected = (r.n_in - r.half) * 16000 / rate  # outputs whose input has arrived
        assert expected - 2 <= r.n_out <= expected + 2
    parts.append(r.flush())
    y = np.concatenate(parts)
    assert y.size == r.n_out == -(-n * 16000 // rate)
    j = np.arange(y.size)
    time_err = y.astype(np.float64) / rate - j / 16000  # time of the input used - output time
    last = y.size - 2  # the final output may fall past the input end (zero padding)
    assert np.abs(time_err[:last]).max() <= 0.5 / rate + 1e-12
