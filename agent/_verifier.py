"""The agent's answer to a SYN (PROTOCOL.md section 5), with the keys and limits it pinned.

`SynHandler` builds the protocol core's `SynVerifier` from what the agent holds: the grant keys
and identity provider pinned in agent.toml (the IdP's JWKS fetched by the agent itself and
cached), its local policy, one replay cache and the revocations the service has sent. `answer()`
runs the six checks in the order of section 5, then starts the action through a callback and
signs the SYN-ACK with its result; any failure becomes a signed Reject with the reason code.

While a connection runs, `still_valid()` says whether it may go on: a revocation (section 7) or
the grant's `session_expires_at` ends it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.channel import ChannelKeys
from mrzap.clock import Clock, SystemClock
from mrzap.envelope import parse_signed
from mrzap.handshake import SynVerifier, VerifiedSyn, accept_syn, reject_syn
from mrzap.jwks import HttpJwksSource, JwksSource
from mrzap.keys import public_key_from_bytes
from mrzap.pktoken import PkTokenVerifier
from mrzap.replay import ReplayCache
from mrzap.revocation import RevocationList, verify_revocation
from mrzap.verification import Reason, VerificationError

from ._config import AgentConfig
from ._local_policy import LocalPolicy

__all__ = ["Accepted", "ActionStarter", "Rejected", "SynHandler"]

_log = logging.getLogger("mrzap.agent.verifier")

#: Starts the verified action; returns what the SYN-ACK reports. Raising VerificationError
#: turns the answer into a Reject (e.g. the target user does not exist here).
ActionStarter = Callable[[VerifiedSyn], Awaitable[mrzap_pb2.ActionResult]]


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The SYN passed every check and its action started."""

    verified: VerifiedSyn
    """The SYN, its grant and the verified user."""

    signed_synack: bytes = dataclasses.field(repr=False)
    """The signed SYN-ACK to send back."""

    keys: ChannelKeys = dataclasses.field(repr=False)
    """The channel keys for this connection's frames."""


@dataclasses.dataclass(frozen=True)
class Rejected:
    """The SYN failed a check; nothing was started."""

    error: VerificationError
    """Which check failed, and why."""

    signed_reject: bytes = dataclasses.field(repr=False)
    """The signed Reject to send back."""


class SynHandler:
    """Verifies SYNs for one registered agent and answers them."""

    def __init__(
        self,
        config: AgentConfig,
        key: Ed25519PrivateKey,
        local: LocalPolicy,
        *,
        jwks: JwksSource | None = None,
        clock: Clock | None = None,
    ) -> None:
        """`jwks` defaults to fetching the pinned issuer's keys over HTTPS (section 3)."""
        self._key = key
        self._local = local
        self._clock = clock or SystemClock()
        self._service_keys = {
            pin.key_id: public_key_from_bytes(pin.public_key) for pin in config.grant_keys
        }
        self.revocations = RevocationList(clock=self._clock)
        """What the service has revoked; consulted at SYN time and by `still_valid`."""
        self._verifier = SynVerifier(
            target_id=config.target_id,
            service_keys=self._service_keys,
            tokens=PkTokenVerifier(config.idp, jwks or HttpJwksSource(self._clock), self._clock),
            local_policy=local.policy,
            replay_cache=ReplayCache(self._clock),
            revocations=self.revocations,
            clock=self._clock,
        )
        if local.ignored_users:
            _log.warning(
                "mrzap-agent runs as %s, not root: it can serve only %s; ignoring target users %s",
                local.running_as,
                local.running_as,
                ", ".join(sorted(local.ignored_users)),
            )

    async def verify(self, raw_syn: bytes) -> VerifiedSyn:
        """Run the checks of section 5 in order; raise VerificationError at the first failure."""
        try:
            return await self._verifier.verify(raw_syn)
        except VerificationError as error:
            if error.reason is not Reason.ACTION_TARGET_USER_NOT_ALLOWED:
                raise
            # Same check, same code; only the words change, so a user of a non-root agent
            # learns why rather than guessing at the policy.
            user = _target_user(raw_syn)
            raise VerificationError(error.reason, self._local.refusal(user)) from None

    async def answer(self, raw_syn: bytes, start: ActionStarter) -> Accepted | Rejected:
        """Verify the SYN, start its action, and sign the answer (SYN-ACK or Reject)."""
        try:
            verified = await self.verify(raw_syn)
            result = await start(verified)
        except VerificationError as error:
            # Reasons and messages carry no secrets (verification.py), so they may be logged.
            _log.info("rejected a SYN: %s", error.message)
            return Rejected(error, reject_syn(raw_syn, self._key, error))
        established = accept_syn(verified, self._key, result, self._clock)
        return Accepted(verified, established.signed_synack, established.keys)

    def add_revocation(self, signed: mrzap_pb2.Signed) -> mrzap_pb2.Revocation:
        """Verify a revocation under a pinned grant key and enforce it from now on."""
        revocation = verify_revocation(signed, self._service_keys)
        self.revocations.add(revocation)
        return revocation

    def still_valid(self, verified: VerifiedSyn) -> bool:
        """Whether a running connection may go on: not revoked and its session not expired."""
        return self._clock.now() < verified.session_expires_at and not self.revocations.is_revoked(
            verified.grant
        )


def _target_user(raw_syn: bytes) -> str:
    """The target user of a SYN that already passed steps 1-5 (so it parses)."""
    syn = mrzap_pb2.Syn.FromString(parse_signed(raw_syn).payload)
    action = getattr(syn, syn.WhichOneof("action") or "shell_open")
    return str(action.target_user)
