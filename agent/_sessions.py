"""The agent's running connections: shells (which outlive their clients) and commands.

`Sessions.start` turns a verified SYN (PROTOCOL.md section 5) into a running action and the
`ActionResult` its SYN-ACK reports:

- `shell_open` starts the target user's login shell on a PTY; a new connection's id is the SYN's
  channel id (the broker names the connection the same way), and a channel id that is already a
  running connection's id is refused, so a new action can never take over another's id;
- `shell_attach` re-attaches to a running shell and replays its recent output -- only for the
  same user (issuer and subject of the grant) and the same target user that opened it, so a grant
  for one user never reaches another user's shell;
- `exec` runs a command with pipes.

While a command runs it is listed in the `CommandLedger`, so that the next agent process can end
it should this one be killed outright (`_leftovers`).

The channel layer (frames, flow control) reads and writes through the returned session object
and calls `close` when its channel ends for good. `end_invalid` ends every connection whose
grant was revoked or whose `session_expires_at` passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.handshake import VerifiedSyn
from mrzap.verification import Reason, VerificationError

from ._exec import ExecProcess
from ._leftovers import CommandLedger
from ._pty import DEFAULT_REPLAY_BYTES, PtyShell, ShellOutput
from ._shell_process import TargetUser

__all__ = ["Connection", "Session", "Sessions", "Started"]

_log = logging.getLogger("mrzap.agent.sessions")

Session = PtyShell | ExecProcess


@dataclasses.dataclass(frozen=True)
class Connection:
    """A running action and the SYN that started it."""

    connection_id: str
    """The id clients re-attach with."""

    session: Session
    """The shell or command."""

    verified: VerifiedSyn
    """The SYN (and grant) that opened it; a re-attach replaces it with its own."""


@dataclasses.dataclass(frozen=True)
class Started:
    """What `Sessions.start` did: the SYN-ACK's result and the session to drive."""

    result: mrzap_pb2.ActionResult
    """For the SYN-ACK."""

    session: Session
    """The shell or command."""

    output: ShellOutput | None
    """For a shell: this client's attachment to its output (the replay, then new output)."""


class Sessions:
    """Every connection running on this agent, by connection id."""

    def __init__(
        self, *, replay_bytes: int = DEFAULT_REPLAY_BYTES, ledger: CommandLedger | None = None
    ) -> None:
        self._replay_bytes = replay_bytes
        self._ledger = ledger
        self._connections: dict[str, Connection] = {}
        self.on_detached_end: Callable[[str], None] | None = None
        """Called with the id of a shell that ended by itself while no client was attached."""
        # Tasks the loop holds only weakly: kept here until they finish.
        self._tasks: set[asyncio.Task[object]] = set()

    def __len__(self) -> int:
        return len(self._connections)

    def get(self, connection_id: str) -> Connection | None:
        """The running connection `connection_id`, if any."""
        return self._connections.get(connection_id)

    async def start(self, verified: VerifiedSyn) -> Started:
        """Start (or attach to) what the SYN asks for.

        Raises VerificationError when it cannot be done, so the agent answers with a Reject.
        """
        syn = verified.syn
        if not syn.HasField("shell_attach") and syn.channel_id in self._connections:
            raise VerificationError(
                Reason.MALFORMED, "the channel id is already a running connection's id"
            )
        if syn.HasField("shell_open"):
            return await self._open_shell(verified, syn.shell_open)
        if syn.HasField("shell_attach"):
            return self._attach_shell(verified, syn.shell_attach)
        if syn.HasField("exec"):
            return await self._exec(verified, syn.exec)
        raise VerificationError(
            Reason.MALFORMED, f"this agent cannot serve {verified.action or 'this action'} yet"
        )

    async def _open_shell(self, verified: VerifiedSyn, action: mrzap_pb2.ShellOpen) -> Started:
        user = TargetUser.lookup(action.target_user)
        try:
            shell = await PtyShell.start(
                user,
                term=action.term,
                rows=action.rows or 24,
                cols=action.cols or 80,
                replay_bytes=self._replay_bytes,
            )
        except OSError as error:
            raise _cannot_start(user, error) from None
        output = shell.attach()
        connection_id = self._add(shell, verified)
        _log.info("shell %s started as %s (pid %d)", connection_id, user.name, shell.pid)
        return Started(
            mrzap_pb2.ActionResult(connection_id=connection_id, pid=shell.pid), shell, output
        )

    def _attach_shell(self, verified: VerifiedSyn, action: mrzap_pb2.ShellAttach) -> Started:
        connection = self._connections.get(action.connection_id)
        subject = verified.grant.subject
        if (
            connection is None
            or not isinstance(connection.session, PtyShell)
            or (connection.verified.grant.subject.iss, connection.verified.grant.subject.sub)
            != (subject.iss, subject.sub)
            or connection.session.user.name != action.target_user
        ):
            # One answer for "no such shell" and "not yours": ids of others' shells stay secret.
            raise VerificationError(
                Reason.ACTION_TARGET_USER_NOT_GRANTED,
                f"no shell {action.connection_id!r} of this user runs here",
            )
        shell = connection.session
        output = shell.attach()
        if action.rows and action.cols:
            shell.resize(action.rows, action.cols)
        # The newer grant now bounds the connection (its expiry, its revocation).
        self._connections[action.connection_id] = dataclasses.replace(connection, verified=verified)
        return Started(
            mrzap_pb2.ActionResult(
                connection_id=action.connection_id, pid=shell.pid, replay=output.replay
            ),
            shell,
            output,
        )

    async def _exec(self, verified: VerifiedSyn, action: mrzap_pb2.Exec) -> Started:
        user = TargetUser.lookup(action.target_user)
        try:
            process = await ExecProcess.start(user, action.command)
        except OSError as error:
            raise _cannot_start(user, error) from None
        connection_id = self._add(process, verified)
        return Started(
            mrzap_pb2.ActionResult(connection_id=connection_id, pid=process.pid), process, None
        )

    def _add(self, session: Session, verified: VerifiedSyn) -> str:
        connection_id = verified.syn.channel_id
        if connection_id in self._connections:
            # Checked before starting too; a SYN for the same channel id may have raced this one.
            self._keep(asyncio.ensure_future(session.close()))
            raise VerificationError(
                Reason.MALFORMED, "the channel id is already a running connection's id"
            )
        self._connections[connection_id] = Connection(connection_id, session, verified)
        if self._ledger is not None and isinstance(session, ExecProcess):
            self._ledger.add(session.pid)
        waiter: asyncio.Task[object] = asyncio.ensure_future(session.wait())
        self._keep(waiter)
        waiter.add_done_callback(lambda _: self._forget(connection_id, session))
        return connection_id

    def _keep(self, task: asyncio.Task[object]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, connection_id: str, session: Session) -> None:
        if self._ledger is not None and isinstance(session, ExecProcess):
            self._ledger.remove(session.pid)
        connection = self._connections.get(connection_id)
        ended_by_itself = connection is not None and connection.session is session
        if ended_by_itself:
            del self._connections[connection_id]
        if isinstance(session, PtyShell) and not session.attached:
            # A shell that ended while detached has no channel left to free its terminal, nor
            # to tell the broker.
            self._keep(asyncio.ensure_future(session.close()))
            if ended_by_itself and self.on_detached_end is not None:
                self.on_detached_end(connection_id)

    async def close(self, connection_id: str) -> None:
        """End the connection's shell or command (if it still runs) and forget it."""
        connection = self._connections.pop(connection_id, None)
        if connection is not None:
            await connection.session.close()

    def next_expiry(self) -> float | None:
        """The earliest `session_expires_at` of the running connections, to sleep until."""
        return min(
            (c.verified.session_expires_at for c in self._connections.values()), default=None
        )

    async def end_invalid(self, still_valid: Callable[[VerifiedSyn], bool]) -> list[str]:
        """End every connection whose grant is no longer valid; their ids."""
        ended = [c.connection_id for c in self._connections.values() if not still_valid(c.verified)]
        await asyncio.gather(*(self.close(connection_id) for connection_id in ended))
        for connection_id in ended:
            _log.info(
                "connection %s ended: its grant was revoked or its session expired", connection_id
            )
        return ended

    async def close_all(self) -> None:
        """End every connection (the agent is stopping)."""
        await asyncio.gather(*(self.close(c) for c in list(self._connections)))


def _cannot_start(user: TargetUser, error: OSError) -> VerificationError:
    # The SYN can only be answered with a Reject; the target cannot serve this user as configured
    # (e.g. a login shell that does not exist), which is what this code says.
    _log.warning("cannot start a process as %s: %s", user.name, error)
    return VerificationError(
        Reason.ACTION_TARGET_USER_NOT_ALLOWED,
        f"cannot start a process as {user.name!r} here: {error.strerror or error}",
    )
