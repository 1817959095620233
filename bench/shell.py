"""Shells and commands through mrzap next to OpenSSH, on the same machine in the same run.

It starts two private set-ups on loopback and drives both the way a user does:
- OpenSSH: a private `sshd` (its own host key and configuration in a temporary directory, key-based
  login with a temporary key) and the `ssh` client;
- mrzap: `mrzapd up` in a temporary data directory (all roles, the development IdP, a registered
  local agent and the demo policy), `zli login` as the demo administrator, then `zli connect` and
  `zli exec` to this machine.

Both log in to the same Unix account. Run as root, that is one made for the run with the
distribution's default startup files, and removed after: sshd runs a command through the
account's shell, which reads its ~/.bashrc (Debian builds bash so), while the agent's does not,
so a heavy ~/.bashrc (root's with a version manager costs ~150 ms) would slow only OpenSSH and
flatter mrzap. Otherwise it is the current user.

It prints, as absolute figures and as ratios mrzap / OpenSSH, next to the goals:
- keystroke echo round trip, p50 and p99: `ssh -tt` and `zli connect`, each in a pseudo-terminal
  driven by this script, running `stty raw -echo; exec cat` in the remote shell; one byte written,
  timed until it comes back (N samples after a warm-up);
- `zli exec TARGET -- true` against `ssh HOST true`, wall time, median;
- output throughput: `cat` of a 100 MiB text file (random base64 lines) to /dev/null on the
  client side.

Run from the repository root: `python bench/shell.py [--samples 500] [--execs 20] [--mib 100]`.
When /usr/sbin/sshd is missing it installs `openssh-server` with apt-get if it runs as root, and
otherwise says how and exits. Linux only. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import pty
import pwd
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# Runnable as a plain script from the repository root: make the project and gen/ importable.
_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "gen", _ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import pyotp  # noqa: E402

from idp.testing import http_request, submit_login_form  # noqa: E402
from mrzap.process import ChildProcess  # noqa: E402

BIN = Path(sys.executable).parent
SSHD = Path("/usr/sbin/sshd")
#: Typed into the remote shell: raw mode without echo, so each byte comes back once, from `cat`.
#: The quotes keep the echoed command line from matching the marker.
_START_CAT = b"stty raw -echo; echo MRZAP''READY; exec cat\r"
_READY = b"MRZAPREADY"
_TIMEOUT_S = 30.0
_GOALS = {"echo p50": 1.5, "echo p99": 3.0, "exec true": 2.0}


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- OpenSSH -------------------------------------------------------------------------------------


def ensure_sshd() -> None:
    """Install openssh-server when sshd is missing and we may; otherwise explain and exit."""
    if SSHD.exists():
        return
    if os.getuid() != 0:
        sys.exit(
            f"{SSHD} is missing: install openssh-server (`sudo apt-get install openssh-server`) "
            "or run this benchmark as root, which installs it"
        )
    print("installing openssh-server ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "openssh-server"], check=True, env=env)


@contextlib.contextmanager
def bench_account() -> Iterator[str]:
    """The Unix account both sides log in to (see the module docstring)."""
    if os.getuid() != 0:
        yield pwd.getpwuid(os.getuid()).pw_name
        return
    name = f"mzbench{os.getpid()}"
    # A password of "*" matches none, but unlike useradd's "!" it does not lock the account,
    # which sshd would refuse even with a key.
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", name], check=True
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@contextlib.contextmanager
def private_sshd(directory: Path, user: str) -> Iterator[list[str]]:
    """Run an sshd on a loopback port; yields the ssh command (without the remote command)."""
    # sshd reads authorized_keys as the user logging in: it must reach and read it.
    directory.mkdir(mode=0o711)
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)],
            check=True,
        )
    authorized = directory / "authorized_keys"
    authorized.write_text((directory / "user_key.pub").read_text())
    authorized.chmod(0o644)
    port = free_port()
    (directory / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_key'}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {directory / 'authorized_keys'}\n"
        # The temporary directory is not the user's home: its modes are ours, not sshd's rules.
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nPrintMotd no\nPrintLastLog no\n"
    )
    # sshd's privilege separation needs this directory (a packaged sshd's unit creates it).
    if os.getuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = ChildProcess([str(SSHD), "-D", "-e", "-f", str(directory / "sshd_config")])
    try:
        sshd.wait_for(r"Server listening on 127\.0\.0\.1")
        yield [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(directory / "user_key"),
            "-p",
            str(port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{user}@127.0.0.1",
        ]
    finally:
        sshd.stop()


# --- mrzap ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def private_mrzap(directory: Path, user: str) -> Iterator[tuple[list[str], dict[str, str], str]]:
    """Run `mrzapd up` offering `user` and log in as alice; yields the zli command, its
    environment and the `USER@TARGET` of this machine."""
    port, idp_port = free_port(), free_port()
    up = ChildProcess(
        [
            str(BIN / "mrzapd"),
            "up",
            "--data-dir",
            str(directory / "data"),
            "--port",
            str(port),
            "--idp-port",
            str(idp_port),
            "--target-user",
            user,
        ]
    )
    try:
        up.wait_for("Press Ctrl-C to stop everything", timeout_s=120)
        target = up.wait_for(r"zli exec (\S+) -- ").group(1)
        password = up.wait_for(r"alice\s+password (\S+)").group(1)
        ca_file = up.wait_for(r"CA certificate (\S+)\)").group(1)
        env = {
            **os.environ,
            "MRZAP_CONFIG_DIR": str(directory / "zli"),
            "MRZAP_SERVER": f"127.0.0.1:{port}",
            "MRZAP_CA_FILE": ca_file,
        }
        zli = [str(BIN / "zli")]
        _login(zli, env, "alice", password)
        _wait_online(zli, env, target)
        yield zli, env, target
    finally:
        up.stop(timeout_s=30)


def _login(zli: list[str], env: dict[str, str], user: str, password: str) -> None:
    """`zli login` with the browser's part played here, and the MFA enrolment."""
    login = ChildProcess([*zli, "login", "--no-browser", "--timeout", "30"], env=env, stdin=True)
    try:
        url = login.wait_for(r"(http://127\.0\.0\.1:\d+/authorize\?\S+)").group(1)
        reply = submit_login_form(url, user, password)
        http_request(reply.headers["Location"])
        secret = login.wait_for(r"enter the secret ([A-Z2-7]+) by hand").group(1)
        login.write(pyotp.TOTP(secret).now() + "\n")
        if login.wait(_TIMEOUT_S) != 0:
            raise RuntimeError(f"zli login failed:\n{login.output}")
    finally:
        login.stop()


def _wait_online(zli: list[str], env: dict[str, str], target: str) -> None:
    """Until a command on the local agent runs (it comes online a moment after the banner)."""
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        done = subprocess.run(
            [*zli, "exec", target, "--", "true"], env=env, capture_output=True, check=False
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"zli exec never worked: {done.stderr.decode()}")
        time.sleep(0.5)


# --- measurements --------------------------------------------------------------------------------


def _read_until(fd: int, wanted: bytes, seen: bytearray) -> None:
    """Read from `fd` into `seen` until `wanted` is in it."""
    deadline = time.monotonic() + _TIMEOUT_S
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"no {wanted!r} within {_TIMEOUT_S:g} s; got {bytes(seen[-300:])!r}")
        seen += os.read(fd, 65536)


def echo_round_trips(argv: Sequence[str], env: dict[str, str], samples: int) -> list[float]:
    """Seconds from writing one byte to the client's terminal until the remote `cat` echoes it."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the client, on the new terminal
        try:
            os.execvpe(argv[0], list(argv), env)  # noqa: S606 -- the client, no shell between
        finally:
            os._exit(127)
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        seen = bytearray()
        time.sleep(0.5)  # the shell's prompt; typing earlier is fine, this only tidies the output
        os.write(fd, _START_CAT)
        _read_until(fd, _READY, seen)
        times: list[float] = []
        warm_up = max(samples // 10, 20)
        for i in range(warm_up + samples):
            key = bytes([ord("a") + i % 26])
            seen.clear()
            start = time.perf_counter()
            os.write(fd, key)
            _read_until(fd, key, seen)
            if i >= warm_up:
                times.append(time.perf_counter() - start)
        return times
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)


def exec_times(argv: Sequence[str], env: dict[str, str], runs: int) -> tuple[list[float], int]:
    """Wall-clock seconds of each successful run of `argv` (a remote `true`), and the failures.

    A failed run is counted, not timed, so one flaky run does not lose the whole benchmark.
    """
    times, failures = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            argv, env=env, check=False, stdin=subprocess.DEVNULL, capture_output=True
        )
        if done.returncode == 0:
            times.append(time.perf_counter() - start)
        else:
            failures += 1
            print(f"  failed: {' '.join(argv[-4:])}: {done.stderr.decode().strip()}", flush=True)
    if not times:
        raise RuntimeError(f"every run of {argv} failed")
    return times, failures


def throughput_mb_s(argv: Sequence[str], env: dict[str, str], size: int) -> float:
    """MB/s of `argv` (a remote `cat` of a `size`-byte file) writing to /dev/null.

    A failed run is reported and tried again (up to three times).
    """
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run(
            argv,
            env=env,
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if done.returncode == 0:
            return size / 1e6 / (time.perf_counter() - start)
        print(f"  failed: {' '.join(argv[-4:])}: {done.stderr.decode().strip()}", flush=True)
    raise RuntimeError(f"{argv} failed three times")


def text_file(path: Path, mib: int) -> int:
    """Write `mib` MiB of random base64 lines: what a log looks like to a terminal, and nothing a
    transport could compress much (OpenSSH does not compress by default anyway); its size."""
    line_bytes = 57  # 76 base64 characters and a newline per line, like `base64`
    with path.open("wb") as out:
        written = 0
        while written < mib << 20:
            block = base64.encodebytes(os.urandom(line_bytes * 1024))
            out.write(block[: (mib << 20) - written])
            written += min(len(block), (mib << 20) - written)
    return mib << 20


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- the run -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=500, help="echo round trips to time")
    parser.add_argument("--execs", type=int, default=20, help="remote `true` runs to time")
    parser.add_argument("--mib", type=int, default=100, help="size of the file to cat, MiB")
    args = parser.parse_args()
    ensure_sshd()
    if not shutil.which("ssh"):
        sys.exit("the ssh client is missing: install openssh-client")
    with (
        tempfile.TemporaryDirectory(prefix="mrzap-bench-shell-") as tmp,
        bench_account() as user,
    ):
        root = Path(tmp)
        root.chmod(0o711)  # the account reaches the payload and authorized_keys below it
        size = text_file(root / "payload", args.mib)
        payload = str(root / "payload")
        with (
            private_sshd(root / "sshd", user) as ssh,
            private_mrzap(root / "mrzap", user) as mrzap,
        ):
            zli, env, target = mrzap
            print("measuring ...", flush=True)
            results: dict[str, tuple[float, float]] = {}
            ssh_echo = echo_round_trips([ssh[0], "-tt", *ssh[1:]], env, args.samples)
            zli_echo = echo_round_trips([*zli, "connect", target], env, args.samples)
            results["echo p50"] = (percentile(ssh_echo, 0.5), percentile(zli_echo, 0.5))
            results["echo p99"] = (percentile(ssh_echo, 0.99), percentile(zli_echo, 0.99))
            ssh_exec, ssh_failed = exec_times([*ssh, "true"], env, args.execs)
            zli_exec, zli_failed = exec_times([*zli, "exec", target, "--", "true"], env, args.execs)
            results["exec true"] = (statistics.median(ssh_exec), statistics.median(zli_exec))
            failures = (ssh_failed, zli_failed)
            ssh_rate = throughput_mb_s([*ssh, "cat", payload], env, size)
            zli_rate = throughput_mb_s([*zli, "exec", target, "--", "cat", payload], env, size)
        report(results, (ssh_rate, zli_rate), failures, args)


def report(
    results: dict[str, tuple[float, float]],
    rates: tuple[float, float],
    failures: tuple[int, int],
    args: argparse.Namespace,
) -> None:
    """Print the table: OpenSSH, mrzap, the ratio and the goal."""
    print(
        f"\nshell benchmark: echo N={args.samples}, exec N={args.execs} (median), "
        f"cat {args.mib} MiB; loopback, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews both)\n"
    )
    print(f"{'measure':<22}{'OpenSSH':>12}{'mrzap':>12}{'mrzap/ssh':>11}  goal")
    for name, (ssh, mrzap) in results.items():
        ratio = mrzap / ssh
        goal = _GOALS.get(name)
        verdict = f"≤ {goal:g}x {'met' if ratio <= goal else 'MISSED'}" if goal else ""
        print(
            f"{name + ' (ms)':<22}{ssh * 1e3:>12.2f}{mrzap * 1e3:>12.2f}{ratio:>10.2f}x  {verdict}"
        )
    ssh_rate, zli_rate = rates
    print(
        f"{'cat throughput (MB/s)':<22}{ssh_rate:>12.1f}{zli_rate:>12.1f}"
        f"{zli_rate / ssh_rate:>10.2f}x  (higher is better)"
    )
    if any(failures):
        print(f"failed exec runs: OpenSSH {failures[0]}, mrzap {failures[1]} (not timed)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
