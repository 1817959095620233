"""Login, MFA and service sessions: the auth role's domain logic."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import secrets

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.clock import Clock, SystemClock
from mrzap.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from mrzap.login_proof import verify_login_proof
from mrzap.paging import decode_page_token, encode_page_token
from mrzap.pktoken import PkTokenVerifier, VerifiedIdentity
from mrzap.replay import ReplayCache
from mrzap.verification import Reason, VerificationError

from . import _mfa
from ._api_key_store import ApiKeyStore
from ._api_keys import ApiKeyService, looks_like_api_key
from ._caller import Caller
from ._config import AuthConfig
from ._store import AuthStore, Session, User, UserLock

__all__ = [
    "LOCKED_MESSAGE",
    "AuthService",
    "Enrolment",
    "LoginResult",
    "MfaStatus",
    "SessionInfo",
]

#: The refusal of every login, refresh and call of a locked user.
LOCKED_MESSAGE = "this user is locked by an administrator"
#: The longest lock reason kept; reasons are for people, and audit events repeat them.
MAX_LOCK_REASON = 1000

#: How far a login proof's timestamp may be from the service's clock.
PROOF_WINDOW_S = 120.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class MfaStatus(enum.Enum):
    """What a session still needs before it can be used."""

    DONE = "done"
    ENROLMENT_REQUIRED = "enrolment_required"
    VERIFICATION_REQUIRED = "verification_required"


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """An authenticated session and its user."""

    session: Session
    user: User
    is_admin: bool
    mfa: MfaStatus


@dataclasses.dataclass(frozen=True)
class LoginResult:
    """A new session; `token` is the bearer secret the client presents from now on."""

    token: str = dataclasses.field(repr=False)
    info: SessionInfo


@dataclasses.dataclass(frozen=True)
class Enrolment:
    """A TOTP secret to add to an authenticator app."""

    secret: str = dataclasses.field(repr=False)
    uri: str = dataclasses.field(repr=False)


def hash_token(token: str) -> bytes:
    """Sessions are stored by the SHA-256 of their token, never the token itself."""
    return hashlib.sha256(token.encode()).digest()


class AuthService:
    """Logs users in with PK tokens, runs MFA, and authenticates sessions."""

    def __init__(
        self,
        config: AuthConfig,
        store: AuthStore,
        tokens: PkTokenVerifier,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._tokens = tokens
        self._clock = clock or SystemClock()
        self._proofs = ReplayCache(self._clock)
        self._api_keys = ApiKeyService(ApiKeyStore(store.database), self._clock)

    @property
    def config(self) -> AuthConfig:
        """The role's configuration."""
        return self._config

    @property
    def api_keys(self) -> ApiKeyService:
        """The role's API keys (service accounts)."""
        return self._api_keys

    async def login(
        self, pk_token: mrzap_pb2.PkToken, timestamp_ms: int, proof: bytes
    ) -> LoginResult:
        """Verify the PK token and the proof of the session key; start an MFA-pending session."""
        identity = await self._verify("login", pk_token, timestamp_ms, proof)
        now = self._clock.now()
        groups = _groups(identity, self._config.groups_claim)
        # An unverified email must never make someone an administrator or match another user.
        email = identity.email.lower() if identity.email_verified else ""
        # Checked before the upsert, so a refused login changes nothing (not even last login).
        known = await self._store.user_by_identity(identity.iss, identity.sub)
        if known is not None and known.locked:
            raise PermissionDenied(LOCKED_MESSAGE)
        user = await self._store.upsert_user(identity.iss, identity.sub, email, groups, now)
        token = secrets.token_urlsafe(32)
        mfa_done = None if self._config.controls.mfa_required else now
        session = await self._store.create_session(
            hash_token(token),
            user.id,
            identity.upk,
            identity.session_started_at,
            now,
            self._expiry(identity),
            mfa_done,
        )
        return LoginResult(token, await self._info(session, user))

    async def authenticate(
        self, token: str, *, allow_mfa_pending: bool = False, allow_expired: bool = False
    ) -> SessionInfo:
        """The live session of a bearer token; Unauthenticated if there is none.

        `allow_expired` is for refreshing: an expired (never a revoked) session may be extended
        by a refreshed ID token and the session key's proof, up to the maximum session age.
        """
        session = await self._store.session_by_token(hash_token(token))
        now = self._clock.now()
        if session is None:
            raise Unauthenticated("not logged in: run `zli login`")
        user = await self._store.get_user(session.user_id)
        if user is None:
            raise Unauthenticated("the session's user no longer exists")
        # Before the revocation check: the lock ended this session, and its holder should be
        # told why rather than be sent to `zli login`, which would refuse them too.
        if user.locked:
            raise PermissionDenied(LOCKED_MESSAGE)
        if session.revoked_at is not None:
            raise Unauthenticated("not logged in: run `zli login`")
        if now >= session.expires_at and not allow_expired:
            raise Unauthenticated("the session has expired: run `zli login`")
        info = await self._info(session, user)
        if info.mfa is not MfaStatus.DONE and not allow_mfa_pending:
            raise Unauthenticated("MFA is not complete for this session: run `zli login`")
        return info

    async def authenticate_caller(self, token: str) -> Caller:
        """The caller behind a bearer token: an API key, or a session that has passed MFA."""
        if looks_like_api_key(token):
            return await self.api_keys.authenticate(token)
        return Caller.of_session(await self.authenticate(token))

    async def refresh(
        self, info: SessionInfo, pk_token: mrzap_pb2.PkToken, timestamp_ms: int, proof: bytes
    ) -> SessionInfo:
        """Extend a session with a refreshed ID token, never past the maximum session age."""
        identity = await self._verify("refresh", pk_token, timestamp_ms, proof)
        session = info.session
        if identity.upk != session.upk:
            raise PermissionDenied("the PK token is bound to another session key")
        if (identity.iss, identity.sub) != (info.user.issuer, info.user.subject):
            raise PermissionDenied("the PK token is for another user")
        # Read again: a lock may have come after the session was authenticated.
        user = await self._store.get_user(info.user.id)
        if user is None or user.locked:
            raise PermissionDenied(LOCKED_MESSAGE)
        expires_at = self._expiry(identity)
        await self._store.update_session(session.id, expires_at=expires_at)
        return dataclasses.replace(
            info, session=dataclasses.replace(session, expires_at=expires_at)
        )

    async def logout(self, info: SessionInfo) -> None:
        """End the session."""
        await self._store.update_session(info.session.id, revoked_at=self._clock.now())

    async def enroll_mfa(self, info: SessionInfo) -> Enrolment:
        """Start TOTP enrolment for a user who has none confirmed."""
        if info.mfa is not MfaStatus.ENROLMENT_REQUIRED:
            raise FailedPrecondition(
                "MFA is already enrolled; an administrator can reset it with `zli mfa reset`"
            )
        secret = _mfa.new_secret()
        await self._store.start_enrolment(info.user.id, secret)
        uri = _mfa.provisioning_uri(secret, info.user.email, "mrzap")
        return Enrolment(secret, uri)

    async def verify_mfa(self, info: SessionInfo, code: str) -> SessionInfo:
        """Check a TOTP code for the session's user; each code works once."""
        user_id = info.user.id
        state = await self._store.get_mfa(user_id)
        if state is None:
            raise FailedPrecondition("MFA is not enrolled yet")
        now = self._clock.now()
        if now < state.locked_until:
            raise ResourceExhausted(
                f"too many wrong codes: MFA is locked for {int(state.locked_until - now) + 1} s"
            )
        counter = _mfa.matching_counter(state.secret, code, now)
        if counter is None or not await self._store.use_counter(user_id, counter, now):
            lock = _mfa.lock_duration(state.failures + 1)
            await self._store.record_failure(user_id, None if lock is None else now + lock)
            if lock is not None:
                raise ResourceExhausted(f"too many wrong codes: MFA is locked for {int(lock)} s")
            raise Unauthenticated("the code is wrong or was used already")
        await self._store.update_session(info.session.id, mfa_verified_at=now)
        session = dataclasses.replace(info.session, mfa_verified_at=now)
        return dataclasses.replace(info, session=session, mfa=MfaStatus.DONE)

    async def list_users(
        self, page_size: int, page_token: str
    ) -> tuple[list[tuple[User, bool]], str]:
        """A page of users (each with whether they are an administrator) and the next token."""
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        users = await self._store.list_users(decode_page_token(page_token), limit + 1)
        page = users[:limit]
        next_token = encode_page_token((page[-1].email, page[-1].id)) if len(users) > limit else ""
        return [(u, self._config.is_admin(u.email, u.groups)) for u in page], next_token

    async def reset_mfa(self, admin: SessionInfo | Caller, name: str) -> User:
        """Forget a user's MFA (an administrator's action); the user enrols again at next login."""
        if not admin.is_admin:
            raise PermissionDenied("only administrators can reset MFA")
        user = await self._store.find_user(name)
        if user is None:
            raise NotFound(f"no user {name!r}")
        await self._store.delete_mfa(user.id)
        await self._store.revoke_user_sessions(user.id, self._clock.now())
        return user

    async def lock_user(self, admin: SessionInfo | Caller, name: str, reason: str) -> User:
        """Lock a user (an administrator's action): no login, refresh or call until unlocked.

        Their sessions end at once. Locking a locked user again replaces who, when and why.
        Administrators cannot lock themselves, so an organisation cannot lose its last one this
        way by a slip.
        """
        if not admin.is_admin:
            raise PermissionDenied("only administrators can lock users")
        reason = reason.strip()
        if len(reason) > MAX_LOCK_REASON:
            raise InvalidArgument(f"the reason is longer than {MAX_LOCK_REASON} characters")
        user = await self._find(name)
        caller_user = admin.user
        if caller_user is not None and caller_user.id == user.id:
            raise FailedPrecondition("you cannot lock yourself; ask another administrator")
        now = self._clock.now()
        lock = UserLock(now, _display_name(admin), reason)
        locked = await self._store.set_lock(user.id, lock, now)
        if locked is None:
            raise NotFound(f"no user {name!r}")
        return locked

    async def unlock_user(self, admin: SessionInfo | Caller, name: str) -> User:
        """Let a locked user log in again (an administrator's action); sessions the lock ended
        stay ended. Unlocking a user who is not locked changes nothing."""
        if not admin.is_admin:
            raise PermissionDenied("only administrators can unlock users")
        user = await self._find(name)
        unlocked = await self._store.set_lock(user.id, None, self._clock.now())
        if unlocked is None:
            raise NotFound(f"no user {name!r}")
        return unlocked

    async def check_not_locked(self, user_id: str) -> None:
        """PermissionDenied if the user is locked (or gone) now, whatever their session said."""
        user = await self._store.get_user(user_id)
        if user is None or user.locked:
            raise PermissionDenied(LOCKED_MESSAGE)

    async def _find(self, name: str) -> User:
        if not name:
            raise InvalidArgument("name the user by id or email")
        user = await self._store.find_user(name)
        if user is None:
            raise NotFound(f"no user {name!r}")
        return user

    async def _verify(
        self, purpose: str, pk_token: mrzap_pb2.PkToken, timestamp_ms: int, proof: bytes
    ) -> VerifiedIdentity:
        try:
            identity = await self._tokens.verify(pk_token)
        except VerificationError as error:
            if error.reason is Reason.TOKEN_SESSION_TOO_OLD:
                raise Unauthenticated(
                    "the session has reached the organisation's maximum age: run `zli login`"
                ) from None
            raise Unauthenticated(f"the identity provider's token was refused: {error}") from None
        now = self._clock.now()
        if abs(now - timestamp_ms / 1000) > PROOF_WINDOW_S:
            raise Unauthenticated(
                "this computer's clock is more than 2 minutes off the service's: fix the clock"
            )
        if not verify_login_proof(purpose, pk_token, timestamp_ms, proof):
            raise Unauthenticated("the request is not signed by the PK token's session key")
        try:
            self._proofs.check_and_remember(
                f"{purpose}:{pk_token.upk.hex()}", proof, now + 2 * PROOF_WINDOW_S
            )
        except VerificationError:
            raise Unauthenticated("this login request was used before") from None
        return identity

    def _expiry(self, identity: VerifiedIdentity) -> float:
        # A session lives as long as the freshest ID token, and never past the maximum age.
        return min(
            identity.expires_at,
            identity.session_started_at + self._config.idp.max_session_age_s,
        )

    async def _info(self, session: Session, user: User) -> SessionInfo:
        if session.mfa_verified_at is not None:
            mfa = MfaStatus.DONE
        else:
            state = await self._store.get_mfa(user.id)
            confirmed = state is not None and state.confirmed_at is not None
            mfa = MfaStatus.VERIFICATION_REQUIRED if confirmed else MfaStatus.ENROLMENT_REQUIRED
        return SessionInfo(session, user, self._config.is_admin(user.email, user.groups), mfa)


def _display_name(admin: SessionInfo | Caller) -> str:
    if isinstance(admin, Caller):
        return admin.display_name
    return admin.user.email or admin.user.id


def _groups(identity: VerifiedIdentity, claim: str) -> tuple[str, ...]:
    value = identity.claims.get(claim, ())
    if isinstance(value, str):
        return (value,)
    return tuple(str(group) for group in value) if isinstance(value, list | tuple) else ()
