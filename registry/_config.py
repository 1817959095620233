"""Configuration of the registry role."""

from __future__ import annotations

import dataclasses

from mrzap.errors import InvalidArgument

__all__ = ["RegistryConfig"]


@dataclasses.dataclass(frozen=True)
class RegistryConfig:
    """Lifetimes and timeouts of the target lifecycle."""

    activation_token_lifetime_s: float = 600.0
    """How long an activation token can register a target."""

    offline_timeout_s: float = 60.0
    """An ONLINE target not heard from for this long becomes OFFLINE."""

    offline_cleanup_timeout_s: float = 86400.0
    """How long a target may stay OFFLINE before it is TERMINATED, for environments that do not
    set their own."""

    sweep_interval_s: float = 5.0
    """How often the time-based transitions are applied."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise InvalidArgument(f"{field.name} must be positive")
