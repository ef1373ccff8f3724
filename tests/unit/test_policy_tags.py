"""tagOwners through tags_permitted: users, groups, tags owning tags, and unknown tags."""

from __future__ import annotations

import json

from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.policy import PolicyUser

ALICE = PolicyUser(1, "alice", "alice@example.com")
BOB = PolicyUser(2, "bob", "bob@example.com")
CAROL = PolicyUser(3, "carol", "carol@example.com")


def engine() -> TailscalePolicyEngine:
    e = TailscalePolicyEngine()
    e.set_topology([ALICE, BOB, CAROL], [])
    e.set_policy(json.dumps({
        "groups": {"group:ops": ["bob@example.com"]},
        "tagOwners": {
            "tag:web": ["alice@example.com"],
            "tag:db": ["group:ops"],
            "tag:edge": ["tag:web"],  # owners of tag:web may also apply tag:edge
            "tag:byname": ["carol@"],
        },
        "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
    }))
    return e


def test_owner_by_email_group_and_name() -> None:
    e = engine()
    assert e.tags_permitted(ALICE, ["tag:web"])
    assert e.tags_permitted(BOB, ["tag:db"])
    assert e.tags_permitted(CAROL, ["tag:byname"])
    assert not e.tags_permitted(ALICE, ["tag:db"])
    assert not e.tags_permitted(BOB, ["tag:web", "tag:db"])  # every tag must be permitted


def test_tag_owned_by_tag() -> None:
    e = engine()
    assert e.tags_permitted(ALICE, ["tag:edge"])
    assert not e.tags_permitted(BOB, ["tag:edge"])


def test_unknown_tag_is_never_permitted() -> None:
    e = engine()
    assert not e.tags_permitted(ALICE, ["tag:nope"])
    assert not e.tags_permitted(None, ["tag:nope"])
    assert e.tags_permitted(None, ["tag:web"])


def test_without_policy_everything_is_permitted() -> None:
    assert TailscalePolicyEngine().tags_permitted(ALICE, ["tag:anything"])
