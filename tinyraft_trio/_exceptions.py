"""The errors tinyraft_trio raises. All share the base class ``RaftError``."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error raised by tinyraft_trio."""


class NotLeaderError(RaftError):
    """This node is not the leader, so it cannot accept the request.

    The command was not appended anywhere: retrying it elsewhere is safe.

    Attributes:
        leader_id: the leader this node knows of, or None.
        leader_address: that leader's ``"host:port"``, or None.
    """

    def __init__(self, leader_id: str | None = None, leader_address: str | None = None) -> None:
        self.leader_id = leader_id
        self.leader_address = leader_address
        if leader_id is None:
            message = "this node is not the leader and knows of no leader"
        else:
            message = f"this node is not the leader; the leader is {leader_id!r}"
            if leader_address:
                message += f" at {leader_address}"
        super().__init__(message)


class LeadershipLostError(RaftError):
    """Leadership was lost after the command was appended but before it committed.

    The outcome is unknown: the new leader may still commit the command, or may not.
    """


class NodeClosedError(RaftError):
    """The node is not running (it has shut down): the call did nothing, so a command was
    not appended. A caller already waiting for its command when the node shuts down gets
    ``LeadershipLostError`` instead (the outcome is unknown)."""


class StorageFailedError(RaftError):
    """The node's storage failed (for example the disk is full); it takes no further part.

    Nothing the node could not write was acknowledged. Fix the disk and restart the node.
    """


class MembershipChangeError(RaftError):
    """A membership change was refused; the membership is unchanged.

    For example: another change is still in progress, the id is unknown, the id belongs to
    another live member, or the leader has not yet committed an entry of its term.
    """


class LeadershipTransferError(RaftError):
    """Leadership could not be handed over in time; this node still leads."""


class OutcomeUnknownError(RaftError):
    """The command may or may not have been applied, and the client cannot tell which.

    Raised when a request may have reached a leader (it was sent and no definite answer came
    back, or a node answered that the outcome is unknown) and the deadline passed before a
    retry with the same sequence number got a definite answer. Retrying the same command as a
    new one may apply it twice; read the state to find out.

    Attributes:
        reason: the last reason the outcome stayed unknown.
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ClusterUnavailableError(RaftError):
    """No node accepted the request within the timeout; it was certainly not carried out.

    For example every node was unreachable, or none knew of a leader. Retrying is safe.

    Attributes:
        addresses: the addresses tried.
        reason: the last reason a node gave (or the last connection failure).
    """

    def __init__(self, message: str, *, addresses: tuple[str, ...] = (), reason: str = "") -> None:
        super().__init__(message)
        self.addresses = addresses
        self.reason = reason


class CommandFailedError(RaftError):
    """The state machine raised while applying the command (or answering the query).

    For a command, it WAS applied (its effect, if any, stays): this exception is its result,
    the same on every node. Do not retry it as a new command expecting a different outcome.

    Attributes:
        type_name: the name of the exception type the state machine raised.
        message: its message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"the state machine raised {type_name}: {message}")
        self.type_name = type_name
        self.message = message
