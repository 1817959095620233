"""Benchmarks of the MrZAP protocol hot paths, as ratios against baselines measured in the same run.

(a) channel frames (PROTOCOL.md section 6): seal + open of 32 KiB frames, against raw AES-256-GCM
    encrypt + decrypt of the same buffers with one AESGCM object;
(b) SYN verification (section 5) with the IdP's JWKS already cached: median microseconds per
    `SynVerifier.verify`, against one raw Ed25519 verification of the same SYN envelope.

Run from the repository root: `python bench/protocol.py [--seconds N]`. Not a test: nothing here
asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Runnable as a plain script from the repository root: make the project and gen/ importable.
_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "gen", _ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from bastion.mrzap.v1 import mrzap_pb2  # noqa: E402
from mrzap.channel import (  # noqa: E402
    ChannelKeys,
    Direction,
    FrameOpener,
    FrameSealer,
)

FRAME_BYTES = 32 * 1024
CHANNEL_ID = "bench-channel"
_NONCE = struct.Struct(">4xQ")
_SEQ = struct.Struct(">Q")


def _rounds(
    candidates: dict[str, Callable[[int], float]], seconds: float, ops_per_round: int
) -> dict[str, float]:
    """Median ops/s of each candidate, run in interleaved rounds so drift hits all alike."""
    results: dict[str, list[float]] = {name: [] for name in candidates}
    deadline = time.perf_counter() + seconds
    while True:
        for name, run in candidates.items():
            results[name].append(ops_per_round / run(ops_per_round))
        if time.perf_counter() >= deadline and len(results[next(iter(results))]) >= 3:
            break
    return {name: statistics.median(rates) for name, rates in results.items()}


def bench_frames(seconds: float) -> list[tuple[str, float, float]]:
    """(name, MB/s of plaintext, ratio to raw AES-GCM) for 32 KiB frames."""
    keys = ChannelKeys(client_to_agent=os.urandom(32), agent_to_client=os.urandom(32))
    buffers = [os.urandom(FRAME_BYTES) for _ in range(16)]
    messages = [mrzap_pb2.ChannelMessage(data=b) for b in buffers]
    serialized = [m.SerializeToString() for m in messages]

    def raw_aesgcm(n: int) -> float:
        aead = AESGCM(keys.client_to_agent)
        prefix = CHANNEL_ID.encode() + b"\x00"
        start = time.perf_counter()
        for seq in range(n):
            nonce = _NONCE.pack(seq)
            aad = prefix + _SEQ.pack(seq)
            ciphertext = aead.encrypt(nonce, buffers[seq & 15], aad)
            aead.decrypt(nonce, ciphertext, aad)
        return time.perf_counter() - start

    def frame_bytes(n: int) -> float:
        sealer = FrameSealer(keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT)
        opener = FrameOpener(keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT)
        start = time.perf_counter()
        for seq in range(n):
            opener.open_bytes(sealer.seal_bytes(serialized[seq & 15]))
        return time.perf_counter() - start

    def frame_messages(n: int) -> float:
        sealer = FrameSealer(keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT)
        opener = FrameOpener(keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT)
        start = time.perf_counter()
        for seq in range(n):
            opener.open(sealer.seal(messages[seq & 15]))
        return time.perf_counter() - start

    def frame_wire(n: int) -> float:
        sealer = FrameSealer(keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT)
        opener = FrameOpener(keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT)
        from_string = mrzap_pb2.Frame.FromString
        start = time.perf_counter()
        for seq in range(n):
            wire = sealer.seal(messages[seq & 15]).SerializeToString()
            opener.open(from_string(wire))
        return time.perf_counter() - start

    rates = _rounds(
        {
            "raw AESGCM encrypt+decrypt": raw_aesgcm,
            "seal_bytes+open_bytes": frame_bytes,
            "seal+open (ChannelMessage)": frame_messages,
            "seal+open + Frame wire (de)serialize": frame_wire,
        },
        seconds,
        ops_per_round=200,
    )
    baseline = rates["raw AESGCM encrypt+decrypt"]
    return [(name, rate * FRAME_BYTES / 1e6, rate / baseline) for name, rate in rates.items()]


def bench_syn_verification(seconds: float) -> list[tuple[str, float, float]]:
    """(name, median µs, ratio to one Ed25519 verify) for SYN verification, JWKS cached."""
    # Imported here so the frame benchmark runs even where the handshake stack cannot load.
    from mrzap import keys
    from mrzap.config import AgentLocalPolicy
    from mrzap.envelope import Domain, parse_signed
    from mrzap.grant import GrantSigner, new_grant_id
    from mrzap.handshake import SynVerifier, build_syn
    from mrzap.jwks import HttpJwksSource
    from mrzap.pktoken import PkTokenVerifier
    from mrzap.replay import ReplayCache
    from mrzap.testing import FixedClock, TestIdentityProvider
    from mrzap.timestamps import to_timestamp

    target = "bench-target"
    action = mrzap_pb2.ShellOpen(target_user="alice", term="xterm", cols=80, rows=24)
    with TestIdentityProvider() as idp:
        clock = FixedClock(time.time())
        service_key = keys.generate_signing_key()
        signer = GrantSigner(service_key, "svc-1")
        agent_key = keys.generate_signing_key()
        session_key = keys.generate_signing_key()
        pk_token = idp.pk_token(
            keys.public_key_bytes(session_key),
            sub="alice-sub",
            email="alice@example.com",
            issued_at=clock.now(),
        )
        now = clock.now()
        signed_grant = signer.sign(
            mrzap_pb2.Grant(
                grant_id=new_grant_id(),
                org_id="org-1",
                subject=mrzap_pb2.Subject(
                    iss=idp.issuer, sub="alice-sub", email="alice@example.com"
                ),
                upk=keys.public_key_bytes(session_key),
                target_id=target,
                target_public_key=keys.public_key_bytes(agent_key),
                verb=mrzap_pb2.VERB_SHELL,
                target_user="alice",
                not_before=to_timestamp(now - 1),
                start_by=to_timestamp(now + 60),
                session_expires_at=to_timestamp(now + 3600),
            )
        )
        verifier = SynVerifier(
            target_id=target,
            service_keys={"svc-1": service_key.public_key()},
            tokens=PkTokenVerifier(idp.config(client_id="zli"), HttpJwksSource(), clock),
            local_policy=AgentLocalPolicy.from_strings(["alice"], []),
            replay_cache=ReplayCache(clock),
            clock=clock,
        )

        def new_syns(count: int) -> list[bytes]:
            # Each SYN has its own client nonce, so the replay cache accepts every one.
            return [
                build_syn(
                    session_key=session_key,
                    pk_token=pk_token,
                    signed_grant=signed_grant,
                    channel_id=f"bench-{i}",
                    action=action,
                    clock=clock,
                ).signed_syn
                for i in range(count)
            ]

        async def measure() -> list[float]:
            await verifier.verify(new_syns(1)[0])  # fetches and caches the JWKS
            samples: list[float] = []
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline or len(samples) < 20:
                for raw in new_syns(50):
                    start = time.perf_counter_ns()
                    await verifier.verify(raw)
                    samples.append((time.perf_counter_ns() - start) / 1000)
            return samples

        syn_us = statistics.median(asyncio.run(measure()))

    envelope = parse_signed(new_syns(1)[0])
    public = session_key.public_key()
    message = Domain.SYN.value + envelope.payload
    ed25519: list[float] = []
    for _ in range(2000):
        start = time.perf_counter_ns()
        public.verify(envelope.signature, message)
        ed25519.append((time.perf_counter_ns() - start) / 1000)
    ed_us = statistics.median(ed25519)
    return [
        ("Ed25519 verify of the SYN envelope", ed_us, 1.0),
        ("SynVerifier.verify (JWKS cached)", syn_us, syn_us / ed_us),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measuring time per benchmark (default 3)"
    )
    args = parser.parse_args(argv)
    seconds: float = args.seconds

    print(f"(a) channel frames, {FRAME_BYTES // 1024} KiB plaintext, AES-256-GCM")
    print(f"    {'path':<40} {'MB/s':>9} {'ratio':>7}")
    for name, mbps, ratio in bench_frames(seconds):
        print(f"    {name:<40} {mbps:>9.0f} {ratio:>7.2f}")

    print("(b) SYN verification, JWKS cached")
    print(f"    {'path':<40} {'µs':>9} {'ratio':>7}")
    try:
        rows = bench_syn_verification(seconds)
    except ImportError as error:
        print(f"    skipped: the handshake stack does not import here ({error})")
    else:
        for name, micros, ratio in rows:
            print(f"    {name:<40} {micros:>9.1f} {ratio:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
