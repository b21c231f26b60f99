"""A deployment's stop runs to its end through an interrupt (loadtest.deploy.stop_through)."""

from __future__ import annotations

import os
import sys

from loadtest.deploy import stop_through


def test_an_interrupt_during_the_stop_does_not_cut_it_short(tmp_path, capsys):
    """The stand-in for `qwen-vl stop` interrupts this process (as a Ctrl-C would) while it
    runs, then finishes: the stop's end is waited for, and its exit code returned."""
    done = tmp_path / "done"
    child = ("import os, signal, sys, time; time.sleep(0.2); "
             "os.kill(os.getppid(), signal.SIGINT); time.sleep(1); "
             f"open({str(done)!r}, 'w').write('ok'); sys.exit(3)")
    code = stop_through(dict(os.environ), "stack", [sys.executable, "-c", child])
    assert code == 3 and done.read_text() == "ok"
    assert capsys.readouterr().out.count("stopping stack first") == 1
