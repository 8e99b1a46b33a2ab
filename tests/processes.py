"""Child processes for tests (not a test module): every run has a deadline, and a hung run is killed whole.

A training or evaluation run launched by `accelerate launch` or `torchrun` is a tree of processes (launcher, elastic
agent, workers). Each run starts in its own session so that, past its deadline, the whole tree is killed and the
test fails with what the run printed, instead of the test suite waiting forever.
"""

import os
import signal
import socket
import subprocess
import warnings
from collections.abc import Callable, Sequence


# A tiny run takes seconds; this only bounds a run that hangs
DEFAULT_TIMEOUT = 600


class ProcessTimeout(AssertionError):
    def __init__(self, command: Sequence[str], timeout: float, stdout: str, stderr: str):
        super().__init__(
            f"`{' '.join(map(str, command))}` did not finish within {timeout} s and was killed.\n"
            f"stderr (end):\n{stderr[-3000:]}\nstdout (end):\n{stdout[-1000:]}"
        )
        self.stdout, self.stderr = stdout, stderr


def run_process(
    command: Sequence[str], env: dict | None = None, cwd=None, timeout: float = DEFAULT_TIMEOUT
) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True)` with a deadline that kills the process group."""
    process = subprocess.Popen(
        list(map(str, command)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise ProcessTimeout(command, timeout, stdout, stderr) from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def free_port() -> int:
    """A loopback port that nothing listens on now, so that a launch never joins another run's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_distributed(
    make_command: Callable[[int], Sequence[str]], env: dict, cwd=None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Launch a multi-process run on loopback, on a fresh port, with a deadline.

    `make_command(port)` builds the launch command for a rendezvous port. The process group talks over loopback only
    (`GLOO_SOCKET_IFNAME=lo`). A launch that hangs (two runs meeting on one rendezvous port, say) is killed and
    launched once more on another port, with a warning that carries what the first one printed; a second hang fails.
    """
    env = {**env, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    try:
        return run_process(make_command(free_port()), env=env, cwd=cwd, timeout=timeout)
    except ProcessTimeout as hang:
        warnings.warn(f"A multi-process launch hung and is run once more on another port. {hang}", stacklevel=2)
    return run_process(make_command(free_port()), env=env, cwd=cwd, timeout=timeout)
