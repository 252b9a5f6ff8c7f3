"""Videos into timed frames, through PyAV (the only module that imports ``av``).

A video is searched by the moment: it is sampled into a few frames, each encoded like a
photo and stored with its time. :func:`sample` picks them:

- always the first frame;
- a frame where the scene changes: its tiny colour histogram and grey thumbnail differ from
  those of the last frame kept by more than ``VideoSettings.scene_change``;
- at least ``min_per_minute`` (a long static shot still gets a frame every so often) and at
  most ``max_per_minute`` frames a minute (a flickering or fast-cut video does not flood
  the index);
- at most ``max_frames`` frames, and for at most ``seconds`` of work; a video past either
  is indexed up to there, with a note saying so.

It decodes keyframes only (``skip_frame = "NONKEY"``), and not all of them: every packet is
read (cheap: no decoding), and its size says where the picture changed, so only the
keyframes worth looking at reach the decoder (:class:`_Plan`). A phone writes a keyframe
every second or so and a 1080p keyframe costs about as much CPU to decode as the model
spends encoding a kept frame, so decoding each of them would make decoding, not the model,
the limit on indexing (docs/video.md has the measurements). A keyframe is decoded when:

- the frames before it say the scene changed: a frame between keyframes coded nearly as
  big as a keyframe (the encoder had nothing to predict it from: a cut it did not mark), or
  a keyframe much bigger or smaller than the one before (other content: a cut on a keyframe);
- the floor is due, or ``probe_every`` seconds passed since the last one decoded (a slow
  change the sizes do not show, such as walking into another room, or a cut on a keyframe
  of about the same size as the one before);
- keyframes are further apart than the ceiling's gap (each of them could be kept; an encoder
  that spaces them so mostly puts them at cuts);
- looking back (``look_back``): the keyframe in the middle of a run passed over, where the one
  decoded after the run shows a new scene, and the last keyframe when it was passed over, so a
  scene shorter than ``probe_every`` whose cut no packet size shows is not lost.

Where keyframes are further apart than ``dense_after`` or the floor allows, the gap is
filled by seeking to the keyframe before it and decoding forward; nothing else decodes the
frames between keyframes. Scene changes are judged on 32 x 32 pictures scaled by FFmpeg
(``VideoFrame.reformat``), so a 4K frame costs its decoding and no more; only the frames
kept become full-size PIL images.

A file FFmpeg cannot open, one without a video stream and one of zero length raise
:class:`~retrieval.errors.BadVideo` subclasses, whose message is the skip reason.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from retrieval.errors import BadVideo, DamagedVideo, EmptyVideo, NoVideoStream, RetrievalError
from retrieval.media.exif import EMPTY, PhotoMeta
from retrieval.media.files import VIDEO_SUFFIXES

log = logging.getLogger(__name__)

#: The extensions (lower case, with the dot) read as videos: the walk's own list (retrieval/media/files.py).
VIDEO_EXTENSIONS = VIDEO_SUFFIXES

#: Side of the small picture a frame is judged on for scene changes.
_SIG_SIDE = 32
#: Bins per channel of the colour histogram (4 x 4 x 4 = 64 cells).
_BINS = 4
#: Bounds of the time limit scaled with a video's length: a short clip still gets this long
#: (opening, a first keyframe, on a loaded machine), and none gets longer than this.
_LEAST_S, _MOST_S = 20.0, 300.0
#: A frame between keyframes this big against the keyframe before it was coded almost from
#: nothing: a cut. Measured (docs/video.md): a cut 0.39 to 2.6 times the keyframe before (less
#: where the new scene is simpler than the old), a camera's pan at most 0.22 of it. Erring
#: high costs a decode; erring low loses a scene until ``probe_every``.
_CUT_SHARE = 0.4
#: ... or at least _CUT_LOW of the keyframe and this many times the mean frame between the two
#: keyframes before: a cut is 9 to 400 times the frames before it.
_CUT_LOW, _CUT_JUMP = 0.25, 8.0
#: A keyframe whose size differs this much (as a share) from the one before shows other
#: content; within a shot, keyframes differ by about 1% (median), 10% in the worst tenth.
_KEY_CHANGE = 0.1


@dataclass(frozen=True)
class VideoSettings:
    """How videos are sampled; an index run carries one (``IndexSettings.video``)."""

    #: Frames kept per video at most; a longer video is indexed up to the frame that reached it, with a note.
    max_frames: int = 200
    #: Seconds of sampling per file at most (decoding included); past it the video is indexed up
    #: to there, with a note. None: scaled with the video's length (:meth:`time_limit`), so a long
    #: video is bounded by ``max_frames``, not by the clock, on a machine busy with other work.
    seconds: float | None = None
    #: With ``seconds`` None: seconds of sampling allowed per minute of video (at least
    #: ``_LEAST_S``, at most ``_MOST_S``). About ten times what a 1080p phone video costs here.
    seconds_per_minute: float = 10.0
    #: Frames a minute at least: a shot with no change still gets one every 60 / this seconds.
    min_per_minute: float = 4.0
    #: Frames a minute at most: kept frames are at least 60 / this seconds apart.
    max_per_minute: float = 30.0
    #: How different (0 to 1) a frame must be from the last one kept to count as a new scene.
    scene_change: float = 0.3
    #: Seconds between two keyframes above which the frames between them are decoded too, to
    #: find cuts the encoder did not mark with a keyframe (a screen recording, a WebM with one
    #: keyframe): phones write a keyframe every second or two, so theirs are decoded keyframes only.
    dense_after: float = 5.0
    #: Seconds between decoded keyframes at most where packet sizes show no change: a scene
    #: longer than this is never missed, whatever its packets look like (a cut the sizes do not
    #: show, a slow change). At 1080p a keyframe costs about what the model spends on a kept
    #: frame, so this is kept coarse (docs/video.md compares 7.5 s and every keyframe). 0: every
    #: keyframe is decoded (the sampler before packet sizes were used).
    probe_every: float = 10.0
    #: Where the keyframe decoded after a run of passed-over ones shows a new scene, decode the
    #: middle of the run too, and decode the last keyframe when it was passed over: a short
    #: scene whose cut no packet size shows is then not lost (:meth:`_Plan.look_back`). False:
    #: the sampler before (docs/video.md compares them).
    look_back: bool = True

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise RetrievalError(f"frames per video must be at least 1, got {self.max_frames}")
        if not 0 < self.min_per_minute <= self.max_per_minute:
            raise RetrievalError(f"frames a minute: need 0 < at least ({self.min_per_minute:g}) <= at most "
                                 f"({self.max_per_minute:g})")
        if self.seconds is not None and self.seconds <= 0:
            raise RetrievalError(f"seconds of sampling per video must be above 0, got {self.seconds:g}")
        if self.seconds_per_minute <= 0:
            raise RetrievalError(f"seconds of sampling a minute of video must be above 0, got {self.seconds_per_minute:g}")
        if self.probe_every < 0:
            raise RetrievalError(f"seconds between decoded keyframes must be 0 or more, got {self.probe_every:g}")

    def time_limit(self, duration: float | None) -> float:
        """Seconds of sampling allowed for a video of `duration` seconds (None: unknown)."""
        if self.seconds is not None:
            return self.seconds
        minutes = (duration or 0.0) / 60.0
        return min(_MOST_S, max(_LEAST_S, self.seconds_per_minute * minutes))

    @property
    def longest_s(self) -> float:
        """The most seconds any one video may be sampled for (what a caller's backstop must allow)."""
        return self.seconds if self.seconds is not None else _MOST_S

    @property
    def floor_gap(self) -> float:
        """Seconds after which a frame is kept whatever it shows."""
        return 60.0 / self.min_per_minute

    @property
    def ceiling_gap(self) -> float:
        """Seconds that kept frames are apart at least."""
        return 60.0 / self.max_per_minute


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its time from the start of the video, in seconds, and its picture (RGB)."""

    time: float
    image: Image.Image


@dataclass
class Tally:
    """What sampling one video cost: frames decoded (keyframes and frames between), frames kept."""

    decoded: int = 0
    kept: int = 0
    #: Time of the last keyframe read (seconds).
    last_keyframe: float = 0.0
    #: Keyframes read (decoded or not).
    keyframes: int = 0


@dataclass
class _Candidate:
    time: float
    signature: np.ndarray
    frame: Any  # av.VideoFrame, kept only until it is turned into an image
    #: For a keyframe the plan decoded: the times of the keyframes it passed over since the one decoded before.
    skipped: tuple[float, ...] = ()


@dataclass
class _Plan:
    """Which keyframes reach the decoder, judged from packet sizes and times alone (see the module
    docstring). :func:`sample` tells it the time of each frame it keeps."""

    settings: VideoSettings
    last_kept: float = -math.inf
    last_decoded: float = -math.inf
    #: Time and size of the keyframe read before (decoded or not).
    previous: tuple[float, int] | None = None
    #: Since the last keyframe decoded, the packets said that the picture changed.
    changed: bool = False
    #: The last frame kept, in small (its signature), set by :func:`sample`.
    last_signature: np.ndarray | None = None
    #: Times of the keyframes read and not decoded since the last one decoded; ``passed`` is
    #: that run as it stood when the last keyframe was decoded.
    skipped: list[float] = field(default_factory=list)
    passed: tuple[float, ...] = ()
    #: Bytes and count of the frames since the keyframe read last; their mean over the gap before.
    _bytes: int = 0
    _count: int = 0
    _mean: float = math.inf

    def between(self, size: int) -> None:
        """A packet between keyframes, of `size` bytes."""
        self._bytes, self._count = self._bytes + size, self._count + 1
        if self.previous is None:
            return
        key = self.previous[1]
        if size >= _CUT_SHARE * key or (size >= _CUT_LOW * key and size >= _CUT_JUMP * self._mean):
            self.changed = True

    def decode(self, t: float | None, size: int) -> bool:
        """Whether the keyframe at `t` seconds (None: unknown), of `size` bytes, is decoded."""
        previous, self.previous = self.previous, (t if t is not None else math.inf, size)
        if self._count:
            self._mean, self._bytes, self._count = self._bytes / self._count, 0, 0
        settings = self.settings
        if previous is not None and previous[1] and abs(size / previous[1] - 1) > _KEY_CHANGE:
            self.changed = True
        due = (
            previous is None or t is None or settings.probe_every == 0
            or t - previous[0] > settings.ceiling_gap  # sparse keyframes: each could be kept
            or t - self.last_kept >= settings.floor_gap - 1e-6
            or t - self.last_decoded >= settings.probe_every - 1e-6
            or (self.changed and t - self.last_kept >= settings.ceiling_gap - 1e-6)
        )
        if due:
            self.changed = False
            self.last_decoded = t if t is not None else self.last_decoded
            self.passed, self.skipped = tuple(self.skipped), []
        elif t is not None:
            self.skipped.append(t)
        return due

    def look_back(self, candidate: _Candidate) -> float | None:
        """The keyframe to decode before `candidate`, a keyframe decoded after a run of others,
        when it shows a new scene: the middle of the run's keyframes that could be kept beside
        it (a ceiling's gap from the frame kept before and from it). None: nothing to look at.

        Why: a cut that falls on a keyframe of about the same size as the one before shows in no
        packet size, so a scene shorter than ``probe_every`` can lie wholly inside a run of
        keyframes that were not decoded (three scenes of 4 s, cut on x264's keyframes of a second:
        the middle one was lost). The decoded keyframe after the run differing from the last
        kept frame says a cut happened somewhere in it; one decode at its middle finds a scene
        that covers it, which a scene longer than half the run always does. It costs a decode
        per cut after a long run, not per minute as a shorter ``probe_every`` would, and
        nothing on a continuous shot."""
        settings = self.settings
        if self.last_signature is None or settings.probe_every == 0 or not settings.look_back:
            return None
        low, high = self.last_kept + settings.ceiling_gap - 1e-6, candidate.time - settings.ceiling_gap + 1e-6
        window = [t for t in candidate.skipped if low <= t <= high]
        if not window or _difference(candidate.signature, self.last_signature) <= settings.scene_change:
            return None
        return window[len(window) // 2]


def is_video(path: str) -> bool:
    """Whether `path` is read as a video (by its extension)."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def sample(
    path: str, settings: VideoSettings | None = None, notes: list[str] | None = None, tally: Tally | None = None,
) -> Iterator[Frame]:
    """The frames of the video at `path` worth searching, in time order (see the module docstring).

    Raises :class:`~retrieval.errors.BadVideo` (its subclasses) before the first frame when the
    file cannot be sampled at all. What a caller should know (the cap or the time limit was
    reached, the file is damaged after some point) is appended to `notes`; what it cost, to `tally`.
    """
    settings = settings or VideoSettings()
    notes = notes if notes is not None else []
    tally = tally if tally is not None else Tally()
    started = time.monotonic()
    container, stream = _open(path)
    with container:
        duration = _duration(container, stream)
        limit = settings.time_limit(duration)
        plan = _Plan(settings)
        last: _Candidate | None = None
        stopped: str | None = None
        seen = 0.0
        for candidate in _keyframes_and_fill(path, container, stream, plan, notes, tally):
            seen = candidate.time
            if last is None or _worth_keeping(candidate, last, settings):
                yield Frame(candidate.time, _image(candidate.frame))
                tally.kept += 1
                last = candidate
                plan.last_kept, plan.last_signature = candidate.time, candidate.signature
                if tally.kept >= settings.max_frames:
                    stopped = f"reached the cap of {settings.max_frames} frames"
                    break
            candidate.frame = None
            if time.monotonic() - started > limit:
                stopped = f"sampling took more than {limit:g}s (--video-seconds)"
                break
        if tally.kept == 0:
            raise EmptyVideo("a video with no frame to show (zero length)")
        if stopped and last is not None:
            upto = f" of {duration:.1f}s" if duration else ""
            notes.append(f"{stopped}: indexed up to {last.time:.1f}s{upto}")
        elif (duration and duration - tally.last_keyframe > min(settings.dense_after, settings.floor_gap)
              and duration - seen > 1.0 and not notes):
            # Past its last keyframe a video is decoded to the end, so frames that stop this early are missing.
            notes.append(f"its frames stop at {seen:.1f}s of the {duration:.1f}s it declares (truncated?): indexed up to there")


def frame_at(path: str, seconds: float) -> Image.Image:
    """The frame shown at `seconds` into the video (RGB), for thumbnails and contact sheets.

    Seeks to the keyframe before it and decodes forward; past the end, the last frame.
    """
    container, stream = _open(path)
    with container:
        target = max(0.0, float(seconds))
        _seek(container, stream, target)
        shown = None
        try:
            for frame in container.decode(stream):
                t = _time(frame, stream)
                if t is not None and t > target + 1e-3 and shown is not None:
                    break
                shown = frame
        except _ffmpeg_error() as exc:
            if shown is None:
                raise DamagedVideo(f"damaged video: {exc}") from None
        if shown is None:
            raise EmptyVideo("a video with no frame to show (zero length)")
        return _image(shown)


#: A recording date as phones and FFmpeg write it: local time with its offset
#: (com.apple.quicktime.creationdate), or UTC with a Z (creation_time).
_DATE = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.\d+)?\s*(Z|[+-]\d\d:?\d\d)?$")
#: A place in ISO 6709, as phones write it ("+48.8584+002.2945+035.000/").
_PLACE = re.compile(r"^([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")


def recorded(path: str) -> PhotoMeta:
    """When and where a video was recorded, and by which camera, from its container's metadata
    (what phones write: QuickTime's creation date and ISO 6709 place, Apple's make and model);
    EMPTY when it says nothing or cannot be opened. The date filters and the date sort use it
    as they use a photo's EXIF date."""
    try:
        container, stream = _open(path)
    except BadVideo:
        return EMPTY
    with container:
        tags = {**{k.lower(): v for k, v in stream.metadata.items()}, **{k.lower(): v for k, v in container.metadata.items()}}
    taken, offset = None, None
    for key in ("com.apple.quicktime.creationdate", "creation_time", "date"):
        found = _DATE.match(str(tags.get(key, "")).strip())
        if found and not found.group(1).startswith(("1904-", "1970-01-01")):  # QuickTime's and Unix's zero
            taken = f"{found.group(1)}T{found.group(2)}"
            zone = found.group(3)
            offset = "+00:00" if zone in ("Z", None) and key != "date" else _offset(zone)
            break
    lat = lon = None
    for key in ("com.apple.quicktime.location.iso6709", "location"):
        place = _PLACE.match(str(tags.get(key, "")).strip())
        if place and abs(float(place.group(1))) <= 90 and abs(float(place.group(2))) <= 180:
            lat, lon = float(place.group(1)), float(place.group(2))
            break
    make = tags.get("com.apple.quicktime.make") or tags.get("com.android.manufacturer") or tags.get("make")
    model = tags.get("com.apple.quicktime.model") or tags.get("com.android.model") or tags.get("model")
    return PhotoMeta(taken=taken, taken_offset=offset, camera_make=make or None, camera_model=model or None,
                     lat=lat, lon=lon)


def _offset(zone: str | None) -> str | None:
    if not zone or zone == "Z":
        return None
    digits = zone[1:].replace(":", "")
    return f"{zone[0]}{digits[:2]}:{digits[2:]}"


def probe(path: str) -> dict[str, Any]:
    """What a video is, without decoding it: duration (seconds), width, height, codec, frame rate."""
    container, stream = _open(path)
    with container:
        rate = stream.average_rate
        return {
            "duration": _duration(container, stream), "width": stream.codec_context.width,
            "height": stream.codec_context.height, "codec": stream.codec_context.name,
            "fps": float(rate) if rate else None,
        }


# -- opening -------------------------------------------------------------------------
def _ffmpeg_error() -> type[Exception]:
    import av

    return av.FFmpegError


def _open(path: str) -> tuple[Any, Any]:
    """(container, its first video stream), or a BadVideo saying why not."""
    import av

    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DamagedVideo(f"unreadable: {exc.strerror or exc}") from None
    if size == 0:
        raise EmptyVideo("empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.FFmpegError as exc:
        kind = _KINDS.get(os.path.splitext(path)[1].lower(), "a video")
        raise DamagedVideo(f"{kind} FFmpeg cannot read (damaged or truncated?): {_said(exc)}") from None
    if not container.streams.video:
        kinds: list[str] = sorted({str(s.type) for s in container.streams})
        container.close()
        raise NoVideoStream(f"no video stream (it holds {', '.join(kinds) or 'nothing'})")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.width:
        container.close()
        raise DamagedVideo("damaged video: its video stream has no frame size (no codec FFmpeg can decode?)")
    return container, stream


#: What a file is by its name, for the message when FFmpeg cannot open it.
_KINDS = {".mp4": "an MP4 video", ".m4v": "an MP4 video", ".mov": "a QuickTime video", ".webm": "a WebM video",
          ".mkv": "a Matroska video", ".avi": "an AVI video"}


def _said(exc: Exception) -> str:
    # FFmpeg's message without PyAV's "[Errno 1094995529]" and the file name it repeats.
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip()


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _seek(container: Any, stream: Any, seconds: float) -> None:
    """Seek to the keyframe at or before `seconds` (cheap: no frame is decoded)."""
    if stream.time_base is None:
        container.seek(int(seconds * 1_000_000), backward=True, any_frame=False)
        return
    offset = int(seconds / stream.time_base) + (stream.start_time or 0)
    container.seek(offset, stream=stream, backward=True, any_frame=False)


# -- sampling --------------------------------------------------------------------------
def _keyframes_and_fill(
    path: str, container: Any, stream: Any, plan: _Plan, notes: list[str], tally: Tally,
) -> Iterator[_Candidate]:
    """The keyframes `plan` picks, in time order, and every frame between two keyframes further
    apart than ``dense_after`` or the floor's gap (through a second opening of the file, so the
    keyframe pass reads each packet once)."""
    settings = plan.settings
    filler: tuple[Any, Any] | None = None
    last: float | None = None  # the last candidate's time
    dense = min(settings.dense_after, settings.floor_gap)  # keyframes further apart cannot keep the floor
    before: dict[float, float | None] = {}  # a decoded keyframe's time -> the keyframe read before it
    try:
        for candidate in _keyframes(container, stream, plan, notes, tally, before):
            # The keyframe read before this one; where the frame's time is not its packet's (a
            # container that times them differently), the last candidate, as if every keyframe were decoded.
            gap_from = before.pop(candidate.time, last)
            fill = gap_from is not None and candidate.time - gap_from > dense
            middle = plan.look_back(candidate)
            if middle is not None and (last is not None and middle <= last + 1e-6 or fill and gap_from is not None
                                       and middle >= gap_from - 1e-6):
                middle = None  # candidates stay in time order; a gap filled below is decoded whole anyway
            if middle is not None:
                filler = filler or _open(path)
                found = _one(*filler, middle, tally)
                if found is not None:
                    yield found
                    last = found.time
            if fill and gap_from is not None:
                filler = filler or _open(path)
                # From the keyframe before the gap, itself included when it was not decoded.
                yield from _between(*filler, gap_from, candidate.time, tally, inclusive=gap_from != last)
            yield candidate
            last = candidate.time
        # After the last keyframe, to the end of the video.
        end = _duration(container, stream)
        final = tally.last_keyframe if tally.keyframes else None
        if final is not None and (end is None or end - final > dense):
            filler = filler or _open(path)
            yield from _between(*filler, final, math.inf, tally, inclusive=final != last)
        elif (settings.look_back and final is not None and plan.skipped and abs(plan.skipped[-1] - final) < 1e-6
              and final - plan.last_decoded >= settings.ceiling_gap - 1e-6
              and final - plan.last_kept >= settings.ceiling_gap - 1e-6):
            # The last keyframe, when the plan passed over it: no keyframe after it can show that
            # the scene changed since the last one decoded, so a last scene shorter than
            # ``probe_every`` whose cut no packet size showed would be lost (three scenes of 4 s:
            # the third was). One decode a video; the run before it is looked back on as any.
            filler = filler or _open(path)
            found = _one(*filler, final, tally)
            if found is not None:
                found.skipped = tuple(plan.skipped[:-1])
                middle = plan.look_back(found)
                if middle is not None:
                    before_it = _one(*filler, middle, tally)
                    if before_it is not None:
                        yield before_it
                yield found
    finally:
        if filler is not None:
            filler[0].close()


def _keyframes(
    container: Any, stream: Any, plan: _Plan, notes: list[str], tally: Tally, before: dict[float, float | None],
) -> Iterator[_Candidate]:
    """The keyframes `plan` picks, decoded alone: only their packets reach the decoder (which is
    also told to skip the rest, for the decoders that honour it), so the other frames cost their
    reading only. `before` gets, for each keyframe decoded, the time of the keyframe read before it."""
    codec = stream.codec_context
    codec.skip_frame = "NONKEY"
    previous: float | None = None
    try:
        for packet in container.demux(stream):
            if packet.size and not packet.is_keyframe:
                plan.between(packet.size)
                continue
            if packet.size:
                t = _packet_time(packet, stream)
                tally.keyframes += 1
                if t is not None:
                    tally.last_keyframe = t
                if not plan.decode(t, packet.size):
                    previous = t if t is not None else previous
                    continue
                if t is not None:
                    before[t] = previous
                    previous = t
            frames = codec.decode(packet if packet.size else None)  # an empty packet flushes
            if packet.size:
                # Drained at once, not a frame or two later as a decoder that reorders frames would
                # give it: the plan's next choices depend on whether this one is kept. A keyframe
                # needs nothing decoded before it, so the decoder starts afresh at the next one.
                frames += codec.decode(None)
                codec.flush_buffers()
            for frame in frames:
                tally.decoded += 1
                ft = _time(frame, stream)
                if ft is not None:
                    yield _Candidate(ft, _signature(frame), frame, plan.passed)
    except _ffmpeg_error() as exc:
        notes.append(f"damaged after some point, indexed up to there ({_said(exc)})")
    finally:
        codec.skip_frame = "DEFAULT"


def _between(
    container: Any, stream: Any, start: float, end: float, tally: Tally, inclusive: bool = False,
) -> Iterator[_Candidate]:
    """Every frame between `start` and `end` (and the one at `start` if `inclusive`): seek to the
    keyframe at `start`, decode forward."""
    _seek(container, stream, start)
    try:
        for frame in container.decode(stream):
            tally.decoded += 1
            t = _time(frame, stream)
            if t is None or t < start - 1e-6 or (t <= start + 1e-6 and not inclusive):
                continue
            if t >= end - 1e-6:
                return
            yield _Candidate(t, _signature(frame), frame)
    except _ffmpeg_error():
        return  # the keyframe pass notes the damage


def _one(container: Any, stream: Any, at: float, tally: Tally) -> _Candidate | None:
    """The keyframe at `at` seconds, decoded alone through a second opening of the file (seek to
    it: it is the frame the decoder starts from); None if the file ends or fails first."""
    _seek(container, stream, at)
    try:
        for frame in container.decode(stream):
            tally.decoded += 1
            t = _time(frame, stream)
            if t is not None and t >= at - 1e-6:
                return _Candidate(t, _signature(frame), frame)
    except _ffmpeg_error():
        return None  # the keyframe pass notes the damage
    return None


def _packet_time(packet: Any, stream: Any) -> float | None:
    """Seconds from the start of the stream at which a packet's frame is shown (its decoding
    time where it carries no presentation time, as some AVIs)."""
    stamp = packet.pts if packet.pts is not None else packet.dts
    if stamp is None or stream.time_base is None:
        return None
    return float((stamp - (stream.start_time or 0)) * stream.time_base)


def _time(frame: Any, stream: Any) -> float | None:
    """Seconds from the start of the stream (a frame decoded from packets handed to the codec
    carries no time base of its own: the stream's is used)."""
    if frame.pts is None or stream.time_base is None:
        return None
    return float((frame.pts - (stream.start_time or 0)) * stream.time_base)


def _worth_keeping(candidate: _Candidate, last: _Candidate, settings: VideoSettings) -> bool:
    elapsed = candidate.time - last.time
    if elapsed < settings.ceiling_gap:
        return False
    if elapsed >= settings.floor_gap:
        return True
    return _difference(candidate.signature, last.signature) > settings.scene_change


def _signature(frame: Any) -> np.ndarray:
    """A frame in small: its 32 x 32 RGB picture scaled by FFmpeg (not the full frame)."""
    return frame.reformat(width=_SIG_SIDE, height=_SIG_SIDE, format="rgb24").to_ndarray()


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """How different two frames look, 0 (same) to 1: the larger of their colour histograms'
    distance (a cut to another place) and their 8 x 8 grey pictures' mean difference, scaled
    by 1.5 (the same colours rearranged). Coarse on purpose: a camera's pan of a twentieth of
    the frame moves the 8 x 8 picture by a fraction of a cell, and is not a new scene."""
    histogram = 0.5 * float(np.abs(_histogram(a) - _histogram(b)).sum())
    grey = float(np.abs(_grey8(a) - _grey8(b)).mean()) / 255.0
    return max(histogram, 1.5 * grey)


def _grey8(rgb: np.ndarray) -> np.ndarray:
    step = _SIG_SIDE // 8
    return rgb.reshape(8, step, 8, step, 3).mean(axis=(1, 3, 4))


def _histogram(rgb: np.ndarray) -> np.ndarray:
    cells = (rgb.astype(np.int32) * _BINS) // 256
    index = (cells[..., 0] * _BINS + cells[..., 1]) * _BINS + cells[..., 2]
    counts = np.bincount(index.ravel(), minlength=_BINS**3).astype(np.float32)
    return counts / counts.sum()


def _image(frame: Any) -> Image.Image:
    """The frame as shown: RGB, turned as its display matrix says (a phone held upright records
    a landscape frame marked to be turned), as EXIF orientation turns a photo."""
    # Through numpy, not VideoFrame.to_image: the same pixels, about a tenth of the CPU at 1080p
    # (to_image copies row by row), and a kept frame's conversion is paid once per kept frame.
    image = Image.fromarray(frame.to_ndarray(format="rgb24"))
    turn = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    # Both count counterclockwise: FFmpeg's display rotation and PIL's rotate.
    return image.rotate(turn, expand=True) if turn else image
