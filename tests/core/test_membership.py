"""Membership changes in the pure core: single-server changes (dissertation §4.1-§4.2)."""

from __future__ import annotations

import pytest

from tinyraft_trio._core._messages import (
    AppendEntries,
    AppendEntriesResponse,
    RequestVoteResponse,
    TimeoutNow,
)
from tinyraft_trio._core._state import RaftCore
from tinyraft_trio._core._types import Entry, EntryKind, Member, Membership, Role

from .helpers import log_of, make_core


def members(*spec: str) -> Membership:
    """members("a", "b", "~c"): a and b vote, c is a learner."""
    return Membership(
        members=tuple(
            sorted(
                (
                    Member(
                        id=s.lstrip("~"), address=f"{s.lstrip('~')}:1", voter=not s.startswith("~")
                    )
                    for s in spec
                ),
                key=lambda m: m.id,
            )
        )
    )


def config_entry(index: int, term: int, membership: Membership) -> Entry:
    return Entry(term=term, index=index, kind=EntryKind.CONFIG, data=membership.to_bytes())


def leader_with_committed_noop(voters: tuple[str, ...] = ("a", "b", "c")) -> RaftCore:
    core = make_core("a", voters, term=1, pre_vote=False)
    core.election_timeout()
    for peer in voters[1:]:
        core.handle_message(
            peer, RequestVoteResponse(term=core.current_term, vote_granted=True), 0.0
        )
    assert core.role is Role.LEADER
    core.take_ready()
    core.on_persisted(core.log.last_index, core.current_term)
    for peer in voters[1:]:
        append = core.replicate(peer)
        assert isinstance(append, AppendEntries)
        ack(core, peer, core.log.last_index)
    assert core.log.term_at(core.commit_index) == core.current_term
    return core


def ack(core: RaftCore, peer: str, index: int) -> None:
    core.handle_message(
        peer, AppendEntriesResponse(term=core.current_term, success=True, match_index=index), 0.0
    )


def test_configuration_takes_effect_when_appended_and_reverts_when_truncated() -> None:
    """Reference: §4.1: a server uses the latest configuration in its log, committed or not."""
    follower = make_core("b", ("a", "b", "c"))
    new = members("a", "b", "c", "d")
    follower.handle_message(
        "a",
        AppendEntries(
            term=2,
            leader_id="a",
            prev_log_index=0,
            prev_log_term=0,
            entries=(config_entry(1, 2, new),),
            leader_commit=0,
        ),
        0.0,
    )
    assert follower.voters == {"a", "b", "c", "d"}
    # A new leader of term 3 overwrites the uncommitted change.
    follower.handle_message(
        "c",
        AppendEntries(
            term=3,
            leader_id="c",
            prev_log_index=0,
            prev_log_term=0,
            entries=tuple(log_of(3)),
            leader_commit=0,
        ),
        0.0,
    )
    assert follower.voters == {"a", "b", "c"}


def test_a_change_waits_for_the_leaders_first_commit_and_for_the_previous_change() -> None:
    """Reference: §4.1 (one change at a time) and the fix for single-server changes."""
    core = make_core("a", ("a", "b", "c"), term=1, pre_vote=False)
    core.election_timeout()
    core.handle_message("b", RequestVoteResponse(term=2, vote_granted=True), 0.0)
    with pytest.raises(ValueError, match="not committed an entry of its term"):
        core.propose_membership(members("a", "b", "c", "~d"))
    core = leader_with_committed_noop()
    core.propose_membership(members("a", "b", "c", "~d"))
    with pytest.raises(ValueError, match="already in progress"):
        core.propose_membership(members("a", "b", "c", "~d", "~e"))


def test_learners_get_the_log_but_never_count_towards_a_commit() -> None:
    """A 2-voter + 3-learner cluster cannot commit with one voter down."""
    core = leader_with_committed_noop(("a", "b"))
    change = core.propose_membership(members("a", "b", "~c", "~d", "~e"))
    core.on_persisted(change.index, change.term)
    ack(core, "b", change.index)
    assert core.commit_index == change.index
    assert set(core.peers) == {"b", "c", "d", "e"}
    entry = core.propose(b"x")
    core.on_persisted(entry.index, entry.term)
    for learner in ("c", "d", "e"):
        ack(core, learner, entry.index)
    assert core.commit_index < entry.index  # b is down: learners do not make a quorum
    ack(core, "b", entry.index)
    assert core.commit_index == entry.index


def test_learners_do_not_campaign_and_are_not_asked_for_votes() -> None:
    learner = RaftCore(
        node_id="d", membership=members("a", "b", "~d"), settings=make_core().settings
    )
    learner.election_timeout()
    assert learner.take_ready().messages == ()
    voter = RaftCore(
        node_id="a", membership=members("a", "b", "~d"), settings=make_core(pre_vote=False).settings
    )
    voter.election_timeout()
    assert {to for to, _ in voter.take_ready().messages} == {"b"}


def test_removed_leader_steps_down_once_its_removal_commits() -> None:
    """Reference: §4.2.2: the leader manages the cluster until the change commits."""
    core = leader_with_committed_noop()
    change = core.propose_membership(members("b", "c"))
    core.on_persisted(change.index, change.term)
    assert core.role is Role.LEADER
    ack(core, "b", change.index)
    assert core.role is Role.LEADER  # b alone is not a majority of {b, c}
    ack(core, "c", change.index)
    assert core.commit_index == change.index
    assert core.role is Role.FOLLOWER
    core.election_timeout()
    assert core.take_ready().messages == ()  # a removed node stops campaigning


def test_transfer_sends_timeout_now_once_the_target_is_up_to_date() -> None:
    """Reference: §3.10."""
    core = leader_with_committed_noop()
    entry = core.propose(b"x")
    core.on_persisted(entry.index, entry.term)
    core.take_ready()
    core.transfer_leadership("b")
    assert not [m for _, m in core.take_ready().messages if isinstance(m, TimeoutNow)]
    ack(core, "b", entry.index)
    sent = [(to, m) for to, m in core.take_ready().messages if isinstance(m, TimeoutNow)]
    assert sent == [("b", TimeoutNow(term=core.current_term, leader_id="a"))]
    with pytest.raises(ValueError):
        core.transfer_leadership("zz")


def test_snapshot_records_the_configuration_at_its_index() -> None:
    core = leader_with_committed_noop()
    first = core.propose_membership(members("a", "b", "c", "~d"))
    core.on_persisted(first.index, first.term)
    ack(core, "b", first.index)
    second = core.propose(b"x")
    core.on_persisted(second.index, second.term)
    ack(core, "b", second.index)
    core.take_committed()
    assert core.snapshot_meta_at(first.index - 1).membership.ids == {"a", "b", "c"}
    assert core.snapshot_meta_at(second.index).membership.ids == {"a", "b", "c", "d"}


def test_restart_recovers_the_configuration_from_the_log() -> None:
    entries = [*log_of(1), config_entry(2, 1, members("a", "b", "c", "~d"))]
    core = make_core("a", ("a", "b", "c"), log=entries)
    assert core.membership.ids == {"a", "b", "c", "d"}
    assert core.voters == {"a", "b", "c"}
    assert core.membership_index == 2
