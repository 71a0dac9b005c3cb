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
    """The node is shutting down or has shut down."""


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
