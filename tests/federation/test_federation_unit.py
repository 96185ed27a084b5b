"""Fast checks of the local-deployment tooling (no Flower processes started)."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
import tomllib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from cifer_flwr.tooling.federation import Federation, FederationError, ProcessInfo
from cifer_flwr.tooling.federation.audit import find_secret_key
from cifer_flwr.tooling.federation.certs import make_node_auth_key, make_tls_files
from cifer_flwr.tooling.federation.local import flower_env, parse_json_output, write_connection
from cifer_flwr.tooling.federation.processes import descendants, is_alive, spawn, stop_pids
from cifer_flwr.tooling.federation.runs import to_toml


def test_tls_files_chain_and_san(tmp_path):
    files = make_tls_files(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_node_auth_key_is_p384_openssh(tmp_path):
    priv, pub = make_node_auth_key(tmp_path, "node-0")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    key = load_ssh_private_key(priv.read_bytes(), None)
    public = load_ssh_public_key(pub.read_bytes())
    assert public.curve.name == "secp384r1"  # type: ignore[union-attr]
    assert key.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]


def test_connection_toml(tmp_path):
    fed = Federation(directory=tmp_path, address="127.0.0.1:1234", tls=True, ca_cert="/x/ca.crt")
    write_connection(fed)
    conf = tomllib.loads((fed.flwr_home / "config.toml").read_text())
    assert conf["superlink"]["default"] == "cifer-local"
    assert conf["superlink"]["cifer-local"] == {
        "address": "127.0.0.1:1234",
        "root-certificates": "/x/ca.crt",
    }
    fed.tls = False
    write_connection(fed)
    conf = tomllib.loads((fed.flwr_home / "config.toml").read_text())
    assert conf["superlink"]["cifer-local"]["insecure"] is True


def test_state_file_round_trip(tmp_path):
    fed = Federation(
        directory=tmp_path,
        address="127.0.0.1:1",
        processes=[ProcessInfo("superlink", 1, ["a"], "l")],
    )
    fed.save()
    assert Federation.load(tmp_path) == fed
    with pytest.raises(FederationError, match="federation up"):
        Federation.load(tmp_path / "nothing")


def test_run_config_toml_quotes_paths():
    text = to_toml({"public-key": '/a b/"k".key', "encryption": False, "n": 3, "lr": 0.5})
    assert tomllib.loads(text) == {
        "public-key": '/a b/"k".key',
        "encryption": False,
        "n": 3,
        "lr": 0.5,
    }


def test_parse_json_output_skips_text():
    assert parse_json_output('Loading...\n{\n "success": true, "run-id": 5\n}\n') == {
        "success": True,
        "run-id": 5,
    }
    assert parse_json_output("no json") is None


def test_parse_json_output_ignores_colour_codes():
    # what `flwr ... --format json` prints under FORCE_COLOR=1 (a Jupyter kernel sets it)
    coloured = (
        '\x1b[1m{\x1b[0m\n  \x1b[1;34m"success"\x1b[0m: \x1b[3;92mtrue\x1b[0m\n\x1b[1m}\x1b[0m\n'
    )
    assert parse_json_output(coloured) == {"success": True}


def test_flower_env_drops_forced_colour(monkeypatch, tmp_path):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("CLICOLOR_FORCE", "1")
    env = flower_env(tmp_path)
    assert "FORCE_COLOR" not in env and "CLICOLOR_FORCE" not in env


def test_stop_pids_stops_children_too(tmp_path):
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    pid = spawn([sys.executable, "-c", code], log_path=tmp_path / "p.log", env={"PATH": ""})
    for _ in range(50):
        kids = descendants([pid])
        if kids:
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert kids and is_alive(pid)
    assert stop_pids([pid], grace=2) == []
    assert not is_alive(pid) and not any(is_alive(k) for k in kids)


def test_find_secret_key(key_files, tmp_path):
    priv, pub = key_files
    (tmp_path / "ok.txt").write_text("nothing here")
    (tmp_path / "pub.key").write_bytes(pub.read_bytes())
    assert find_secret_key([tmp_path], priv) == ([], 2)
    (tmp_path / "copy.bin").write_bytes(b"xx" + priv.read_bytes()[1000:] + b"yy")
    hits, scanned = find_secret_key([tmp_path], priv)
    assert hits == [tmp_path / "copy.bin"] and scanned == 3


def test_tied_process_tree_dies_with_its_owner(tmp_path):
    """SIGKILL of the owner: the supervisor gets the parent-death signal, takes the tree down."""
    import json
    import os
    import signal
    import time

    grandchild = "import subprocess, sys, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    owner = (
        "import json, sys, time; from pathlib import Path\n"
        "from cifer_flwr.tooling.federation.processes import spawn\n"
        f"pid = spawn([sys.executable, '-c', {grandchild!r}], log_path=Path({str(tmp_path)!r})"
        " / 'c.log', env={'PATH': '/usr/bin:/bin'}, tied=True)\n"
        "print(json.dumps(pid), flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    tied = json.loads(proc.stdout.readline())
    family: list[int] = []
    for _ in range(100):
        family = descendants([tied])
        if len(family) >= 2:  # the command and its own child
            break
        time.sleep(0.1)
    assert len(family) >= 2, family
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(is_alive(p) for p in [tied, *family]):
        time.sleep(0.1)
    assert [p for p in [tied, *family] if is_alive(p)] == []


def test_round_lines_are_picked_from_flwr_log_and_the_log_is_kept_whole(tmp_path):
    """run_app hands each `[cifer] round` line to on_round while copying the stream (issue 22)."""
    import io

    from cifer_flwr.tooling.federation.runs import _copy_log, round_line

    stream = (
        b"\x1b[92mINFO \x1b[0m:      Starting FedAvg strategy:\n"
        b"\x1b[92mINFO \x1b[0m:      [cifer] round 1/2: replies 2 accepted, 0 excluded, "
        b"accuracy 0.9000, loss 0.3000, sent 0.01 MB, received 0.01 MB, 1.00 s\x1b[0m\n"
        b"INFO :      [cifer] round 2/2: replies 0 accepted, 2 excluded, released nothing\n"
        b"\xff not utf-8\n"
    )
    out, lines = io.BytesIO(), []
    _copy_log(io.BytesIO(stream), out, lines.append)
    assert out.getvalue() == stream
    assert lines == [
        "[cifer] round 1/2: replies 2 accepted, 0 excluded, accuracy 0.9000, loss 0.3000, "
        "sent 0.01 MB, received 0.01 MB, 1.00 s",
        "[cifer] round 2/2: replies 0 accepted, 2 excluded, released nothing",
    ]
    assert round_line("INFO : Starting FedAvg strategy") is None
