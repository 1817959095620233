"""Configuration validates on construction and refuses unsafe settings."""

from __future__ import annotations

import dataclasses

import pytest

from mrzap.config import AgentLocalPolicy, DestinationRule, IdpConfig
from mrzap.errors import InvalidArgument


def test_idp_config_defaults() -> None:
    config = IdpConfig(issuer="https://idp.example.com", client_id="zli")
    assert "RS256" in config.allowed_algorithms
    assert config.max_session_age_s == 12 * 3600
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.client_id = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"issuer": "idp.example.com"}, "http"),
        ({"issuer": "http://idp.example.com"}, "https"),
        ({"client_id": ""}, "client_id"),
        ({"allowed_algorithms": frozenset({"none"})}, "never allowed"),
        ({"allowed_algorithms": frozenset({"RS256", "HS256"})}, "never allowed"),
        ({"allowed_algorithms": frozenset()}, "empty"),
        ({"max_session_age_s": 0}, "positive"),
    ],
)
def test_idp_config_refuses(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"issuer": "https://idp.example.com", "client_id": "zli"}
    arguments.update(kwargs)
    with pytest.raises(InvalidArgument, match=message):
        IdpConfig(**arguments)  # type: ignore[arg-type]


def test_loopback_http_issuer_is_allowed_for_development() -> None:
    assert IdpConfig(issuer="http://127.0.0.1:5556", client_id="zli").issuer
    assert IdpConfig(issuer="http://[::1]:5556", client_id="zli").issuer


def test_email_domains_are_case_insensitive() -> None:
    config = IdpConfig(
        issuer="https://idp.example.com",
        client_id="zli",
        allowed_email_domains=frozenset({"Example.COM"}),
    )
    assert config.allowed_email_domains == frozenset({"example.com"})


def test_destination_rules() -> None:
    rule = DestinationRule.parse("DB.internal:5432")
    assert rule.matches("db.internal", 5432)
    assert not rule.matches("db.internal", 5433)
    ranged = DestinationRule.parse("*:8000-8080")
    assert ranged.matches("anything", 8080)
    assert not ranged.matches("anything", 7999)
    assert DestinationRule.parse("[::1]:22").matches("::1", 22)


@pytest.mark.parametrize("text", ["nohost", ":22", "h:0", "h:70000", "h:9-1", "h:x"])
def test_destination_rule_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument):
        DestinationRule.parse(text)


def test_local_policy() -> None:
    policy = AgentLocalPolicy.from_strings(["alice"], ["127.0.0.1:22"])
    assert policy.allows_user("alice")
    assert not policy.allows_user("root")
    assert policy.allows_destination("127.0.0.1", 22)
    assert not policy.allows_destination("127.0.0.1", 23)
    assert AgentLocalPolicy.from_strings(["*"], []).allows_user("root")
    assert not AgentLocalPolicy().allows_user("alice")
