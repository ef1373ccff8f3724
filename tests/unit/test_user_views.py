"""A user made by a login provider shows its identity, picture and groups wherever headscale's
User message does: the admin API (and so `meshscale users list -o json`, headscale's
``provider_id`` and ``profile_pic_url``, plus meshscale's ``groups``) and /api/v1's ListUsers
(``providerId``, ``profilePicUrl``)."""

from __future__ import annotations

from datetime import UTC, datetime

from meshscale.api import restviews
from meshscale.api.adminviews import user_view
from meshscale.cli import hsjson
from meshscale.state.models import User

ALICE = User(7, "alice", display_name="Alice", email="alice@example.com", provider="oidc",
             provider_id="https://login.example.com/sub-1",
             created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
             picture="https://login.example.com/alice.png", groups=("devs",))


def test_the_cli_json_carries_the_identity_picture_and_groups() -> None:
    out = hsjson.user(user_view(ALICE))
    assert out is not None
    assert out["provider"] == "oidc"
    assert out["provider_id"] == "https://login.example.com/sub-1"
    assert out["profile_pic_url"] == "https://login.example.com/alice.png"
    assert out["groups"] == ["devs"]
    assert out["created_at"] == {"seconds": 1767323045, "nanos": 0}


def test_the_rest_user_carries_the_identity_and_picture() -> None:
    out = restviews.user(ALICE)
    assert out is not None
    assert out["providerId"] == "https://login.example.com/sub-1"
    assert out["profilePicUrl"] == "https://login.example.com/alice.png"


def test_a_local_user_has_them_empty() -> None:
    out = hsjson.user(user_view(User(1, "bob")))
    assert out is not None
    assert (out["provider_id"], out["profile_pic_url"], out["groups"]) == ("", "", [])
