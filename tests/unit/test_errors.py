"""One error root: whatever layer raises it, an error the project raises on purpose carries a
stable ``code`` and whether trying again can help."""

from __future__ import annotations

import pytest

from detectors.errors import DetectorError, DeviceOutOfMemory, DrishtikshaError, NotAVideo
from processor.api.common import ApiError
from processor.blobs import SourceMissing, StoreUnavailable, Unreachable
from processor.config import ConfigError
from processor.ingest.sqs import Poison
from storage.errors import StorageBusy, StorageError


@pytest.mark.parametrize(
    ("error", "code", "retryable"),
    [
        (NotAVideo(), "not_a_video", False),
        (DeviceOutOfMemory(), "device_oom", True),
        (StorageBusy(), "storage_busy", True),
        (ConfigError("queue.lease_s: must be positive"), "invalid_config", False),
        (Poison("not an S3 event"), "poison_message", False),
        (Unreachable("no credentials"), "unreachable", True),
        (StoreUnavailable(), "store_unavailable", True),
        (SourceMissing(), "source_missing", False),
        (ApiError(503, "storage_busy", "try again"), "storage_busy", True),
        (ApiError(404, "job_not_found", "no such job"), "job_not_found", False),
    ],
)
def test_every_error_has_a_code_and_says_whether_to_retry(
    error: DrishtikshaError, code: str, retryable: bool
) -> None:
    assert isinstance(error, DrishtikshaError)
    assert (error.code, error.retryable) == (code, retryable)
    assert str(error) == error.message


def test_the_layers_keep_their_own_roots_under_the_one() -> None:
    assert issubclass(DetectorError, DrishtikshaError)
    assert issubclass(StorageError, DrishtikshaError)
    assert not issubclass(StorageError, DetectorError)
    # A class's docstring is its default message.
    assert (
        StorageBusy().message
        == "The job database stayed locked by other writers; try again shortly."
    )
