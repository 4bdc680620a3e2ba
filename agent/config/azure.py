"""Exports to an Azure Storage container (seed 002): the SAS token and how uploads are paced."""

from __future__ import annotations

from pydantic import Field, SecretStr

from agent.config.sections import Section


class AzureSettings(Section):
    """The SAS token (a secret: prefer a credential file ``azure__sas``) and the upload's blocks and retries."""

    sas: SecretStr | None = Field(
        default=None, description="SAS token (sv=…&sig=…) for a container URL given without its query"
    )
    block_size: int = Field(default=4 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024, description="bytes per block")
    attempts: int = Field(default=4, ge=1, le=20, description="tries per request (network errors, 408, 429, 5xx)")
    backoff_initial: float = Field(default=0.5, ge=0, description="first retry delay ceiling (full jitter)")
    backoff_max: float = Field(default=20.0, ge=0)
    timeout: float = Field(default=60.0, gt=0, description="seconds to connect, and to wait for each answer")
