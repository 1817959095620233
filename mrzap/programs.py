"""Where the installed programs start: `zli`, `mrzapd` and `mrzap-agent`, and how they run.

Each one first sets what gRPC's core reads only once, when grpc is imported, and only then imports
its command line. Child processes inherit the setting: the local agent that `mrzapd up` starts
with `python -m agent`, whose package imports grpc before any of its code could set it.

Once a long-running program is ready to serve (the service listening, the agent about to dial
out, `zli connect` with its channel open) it calls `freeze_startup_objects`.
"""

from __future__ import annotations

import gc
import os

__all__ = ["LOW_LATENCY_IO", "agent", "freeze_startup_objects", "mrzapd", "zli"]

#: The grpc I/O path the programs use unless GRPC_EXPERIMENTS is set already. By default grpcio
#: 1.85's EventEngine client and listener hand every read to a thread pool; the older path reads
#: on the polling thread, one thread hop less per message each way. On loopback that cuts a
#: message round trip from about 370 to 250 us (`bench/grpc_io.py`), and a keystroke's echo
#: through the broker takes four such messages. Experiments come and go with grpc releases
#: (grpcio is pinned): a grpc that no longer knows one prints "Unknown experiment" at every start,
#: so rerun the benchmark and update this when upgrading.
LOW_LATENCY_IO = "-event_engine_client,-event_engine_listener"


def freeze_startup_objects() -> None:
    """Keep what exists now (modules, descriptors, configuration: the most of the heap, and
    alive until the process ends) out of the garbage collector's full collections.

    A full collection walks every tracked object and stops the process meanwhile: 60 ms for the
    service's 100,000 objects after its imports here, a keystroke's echo held up that long.
    Frozen, they are never walked again; collections see only objects made since.
    """
    gc.freeze()


def _prefer_low_latency_io() -> None:
    os.environ.setdefault("GRPC_EXPERIMENTS", LOW_LATENCY_IO)


def zli() -> None:
    """The `zli` command."""
    _prefer_low_latency_io()
    from zli.cli import main

    main()


def mrzapd() -> None:
    """The `mrzapd` command."""
    _prefer_low_latency_io()
    from mrzapd.cli import main

    main()


def agent() -> None:
    """The `mrzap-agent` command."""
    _prefer_low_latency_io()
    from agent.cli import main

    main()
