"""An agent process that restarts: what ran under the old one is over, and the service says so.

Real IdP, `mrzapd serve` and `mrzap-agent run`. Alice leaves a recorded shell running detached,
the agent is killed (SIGKILL: no goodbye, no final chunk) and started again. Its AgentStarted makes
the broker close the connection (it can no longer be re-attached) and mark the recording
incomplete, while what was recorded before still verifies.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from mrzap import keys
from mrzap.recording import verify_recording

from .targets import online_site
from .test_agents import ONLINE_LINE, run_agent
from .test_recording_server import POLICY, completed, detached_shell


def test_an_agent_restart_closes_its_connections_and_ends_their_recordings(
    tmp_path: Path,
) -> None:
    with online_site(
        tmp_path, users=("alice",), env="e2e-recording", policy=POLICY, agents=("restart-1",)
    ) as site:
        org = site.org
        script = "echo before-restart-$((1+1)); sleep 600\n"
        connection_id = asyncio.run(detached_shell(org, site.target_id, script))
        open_before = json.loads(org.zli("connections", "list", "--json"))
        assert connection_id in json.dumps(open_before)

        os.kill(site.agent.process.pid, signal.SIGKILL)
        site.agent.wait()
        agent = run_agent(site.root / "restart-1")
        try:
            agent.wait_for(ONLINE_LINE, timeout_s=30)
            recording, chunks = asyncio.run(completed(org, connection_id))
        finally:
            agent.stop()
            print(agent.output)  # shown when the test failed

        assert recording.state == audit_pb.RECORDING_STATE_INCOMPLETE
        public_key = keys.public_key_from_bytes(recording.agent_public_key)
        verified = verify_recording(chunks, public_key, require_complete=False)
        assert "before-restart-2" in "".join(e.data for e in verified.events if e.code == "o")
        assert connection_id not in org.zli("connections", "list")
        assert connection_id in org.zli("connections", "list", "--state", "closed")
        events = org.zli("logs", "events", "--connection", connection_id, "--export", "jsonl")
        assert "the agent restarted" in events
