"""The tests' own process runner: a hung launch tree is killed whole at its deadline and the test fails."""

import socket
import sys

import pytest

from processes import ProcessTimeout, free_port, run_process


def test_a_hung_process_tree_is_killed_at_its_deadline(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    parent = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('launched', flush=True)\n"
        "time.sleep(120)\n"
    )
    with pytest.raises(ProcessTimeout, match="did not finish within 3 s") as hang:
        run_process([sys.executable, "-c", parent], timeout=3)
    assert "launched" in hang.value.stdout
    grandchild = int(pid_file.read_text())
    # Killed with its parent: gone, or a zombie waiting for init to reap it
    try:
        state = open(f"/proc/{grandchild}/stat").read().split(")")[-1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z"), f"the grandchild {grandchild} outlived the deadline (state {state})"


def test_a_finished_process_returns_its_output():
    result = run_process(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]
    )
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_free_port_is_a_loopback_port_nobody_holds():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
