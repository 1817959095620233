"""The AgentAuth check on its own: any input is either a valid answer or a Refusal."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.agent.v1 import agent_service_pb2 as pb
from broker._auth import Refusal, authenticate_agent
from broker._control import ACCESS
from broker.testing import MemoryDirectory
from mrzap import keys

from .conftest import agent_auth

KEY = keys.generate_signing_key()
TARGET = "3f1f5b3c-8d0e-4f7e-9b4a-2f2d1c0b9a88"
NONCE = b"\x07" * 32


def directory() -> MemoryDirectory:
    found = MemoryDirectory()
    found.add(TARGET, keys.public_key_bytes(KEY))
    return found


def check(first: pb.ControlRequest) -> str:
    identity = asyncio.run(authenticate_agent(first, NONCE, directory(), time.time(), 120.0))
    return identity.target_id


def test_every_agent_method_is_classified() -> None:
    service = pb.DESCRIPTOR.services_by_name["AgentService"]
    assert {f"/{service.full_name}/{method.name}" for method in service.methods} == set(ACCESS)


def test_valid_answer_names_the_target() -> None:
    assert check(pb.ControlRequest(agent_auth=agent_auth(KEY, TARGET, NONCE))) == TARGET


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=512))
def test_arbitrary_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(Refusal):
        check(pb.ControlRequest(agent_auth=raw))


@settings(max_examples=100, deadline=None)
@given(flip=st.integers(min_value=0))
def test_any_changed_byte_of_a_valid_answer_is_refused(flip: int) -> None:
    valid = bytearray(agent_auth(KEY, TARGET, NONCE))
    valid[flip % len(valid)] ^= 0x01
    with pytest.raises(Refusal):
        check(pb.ControlRequest(agent_auth=bytes(valid)))
