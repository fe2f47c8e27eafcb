"""`opensd serve` binds its port before it says it is serving: a port in use (or an address that is
not this machine's) ends in one line naming the flag, a nonzero exit status, no traceback."""
from __future__ import annotations

import socket

from opensd import cli


def test_port_in_use_is_reported_once_with_a_hint(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["serve", "--port", str(port), "--outputs-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert "serving on" not in err and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert str(port) in lines[0] and "in use" in lines[0] and "--port" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing was set up for a server that cannot start


def test_an_address_of_another_machine_names_the_host_flag(tmp_path, capsys):
    code = cli.main(["serve", "--host", "192.0.2.1", "--port", "7999", "--api-token", "t",
                     "--outputs-dir", str(tmp_path / "out")])  # TEST-NET-1: never local
    err = capsys.readouterr().err
    assert code != 0 and "--host" in err and "192.0.2.1" in err and "Traceback" not in err, err
