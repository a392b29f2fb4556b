"""Typed errors: the one root every error the project raises on purpose derives from, and those
raised while reading a video or running a detector.

Each class's docstring is its default message; ``code`` is the stable identifier stored with a
failed job and sent in API errors; ``retryable`` tells the caller whether trying again later can
help. The root lives here, in the one module every layer may import (it imports nothing of the
project), so storage's and the daemon's errors share it without depending on each other.
"""

from __future__ import annotations


class DrishtikshaError(Exception):
    """Something went wrong."""

    code: str = "error"
    retryable: bool = False

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        super().__init__(self.message)


class DetectorError(DrishtikshaError):
    """The detector could not judge this video."""

    code = "detector_failed"


class MediaError(DetectorError):
    """The file could not be read as a video."""

    code = "media_error"


class EmptyFile(MediaError):
    """The file is empty (zero bytes)."""

    code = "empty_file"


class NotAVideo(MediaError):
    """The file is not a media container that can be opened."""

    code = "not_a_video"


class NoVideoStream(MediaError):
    """The container holds no video stream."""

    code = "no_video_stream"


class CorruptVideo(MediaError):
    """The video stream is corrupt or truncated: no frame could be decoded where one was due."""

    code = "corrupt_video"


class OverLimit(MediaError):
    """The video exceeds a configured limit."""

    code = "over_limit"


class FileTooLarge(OverLimit):
    """The file is larger than the configured byte limit."""

    code = "file_too_large"


class TooLong(OverLimit):
    """The video is longer than the configured maximum duration."""

    code = "too_long"


class TooManyPixels(OverLimit):
    """The frame size exceeds the configured maximum pixels per frame."""

    code = "too_many_pixels"


class TooManyFrames(OverLimit):
    """Decoding would exceed the configured maximum number of decoded frames."""

    code = "too_many_frames"


class TransientError(DetectorError):
    """A temporary failure (I/O, device out of memory); the job is retried later."""

    code = "transient"
    retryable = True


class DeviceOutOfMemory(TransientError):
    """The device ran out of memory."""

    code = "device_oom"
