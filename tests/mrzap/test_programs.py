"""The programs set gRPC's I/O path before grpc is imported: after that, its core ignores it."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from mrzap.programs import LOW_LATENCY_IO, freeze_startup_objects

# Run in a fresh interpreter: records GRPC_EXPERIMENTS at the moment grpc is first imported.
_PROBE = """
import os, sys
seen = []

class FirstGrpcImport:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS"))
        return None

sys.meta_path.insert(0, FirstGrpcImport())
from mrzap import programs
sys.argv = ["{name}", "--help"]
try:
    programs.{function}()
except SystemExit:
    pass
import grpc  # for a command line that no longer imports grpc by itself
print("GRPC_EXPERIMENTS at import:", seen[0], file=sys.stderr)
"""


def _setting_at_grpc_import(function: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(name=function, function=function)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr.rsplit("GRPC_EXPERIMENTS at import: ", 1)[1].strip()


@pytest.mark.parametrize("function", ["zli", "mrzapd", "agent"])
def test_each_program_sets_the_io_path_before_grpc_loads(function: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    assert _setting_at_grpc_import(function, env) == LOW_LATENCY_IO


def test_an_administrators_own_setting_wins() -> None:
    env = {**os.environ, "GRPC_EXPERIMENTS": "-tcp_rcv_lowat"}
    assert _setting_at_grpc_import("zli", env) == "-tcp_rcv_lowat"


def test_startup_objects_are_kept_out_of_full_collections() -> None:
    tracked = len(gc.get_objects())
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= tracked
        assert len(gc.get_objects()) < tracked // 10  # what a full collection still walks
    finally:
        gc.unfreeze()  # the rest of the test run collects as usual
