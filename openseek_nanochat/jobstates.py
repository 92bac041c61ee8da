"""A job's states as the service stores and returns them: one list for the control plane and for its client."""

from enum import StrEnum


class JobState(StrEnum):  # a str whose f-string is its value ("queued"), as messages need
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = (JobState.succeeded, JobState.failed, JobState.cancelled)
