import json
import stat

from typer.testing import CliRunner

from cifer_flwr.cli import app

runner = CliRunner()


def test_keygen_inspect(tmp_path):
    res = runner.invoke(app, ["keygen", "--name", "fed", "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    priv, pub = tmp_path / "fed" / "private.key", tmp_path / "fed" / "public.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    fp_line = next(line for line in res.output.splitlines() if line.startswith("fingerprint"))
    infos = []
    for f in (priv, pub):
        out = runner.invoke(app, ["keys", "inspect", str(f), "--json"])
        assert out.exit_code == 0, out.output
        infos.append(json.loads(out.output.strip().splitlines()[-1]))
    assert [i["type"] for i in infos] == ["private", "public"]
    assert infos[0]["fingerprint"] == infos[1]["fingerprint"] == fp_line.split()[-1]
    again = runner.invoke(app, ["keygen", "--name", "fed", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "already holds" in again.output and "--force" in again.output


def test_keygen_unknown_preset_and_missing_file(tmp_path):
    res = runner.invoke(app, ["keygen", "--name", "x", "--dir", str(tmp_path), "--preset", "fast"])
    assert res.exit_code == 2 and "choose one of" in res.output
    res = runner.invoke(app, ["keys", "inspect", str(tmp_path / "missing.key")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_bench_crypto_json_small():
    res = runner.invoke(app, ["bench", "crypto", "--params", "20000", "--clients", "3", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)  # one JSON object, nothing else
    for k in (
        "expansion",
        "expansion_nvflare",
        "rel_error",
        "encrypt_s",
        "aggregate_s",
        "decrypt_s",
        "plain_aggregate_s",
    ):
        assert k in data
    assert data["expansion"] < data["expansion_nvflare"]
    assert data["rel_error"] <= 1e-6


def test_crash_reports_never_print_local_variables():
    # a traceback with locals could print key material; typer shows locals by default
    from cifer_flwr.cli import bench, federation, keys, securetrain

    for typer_app in (app, bench.app, federation.app, keys.keys_app, securetrain.app):
        assert typer_app.pretty_exceptions_show_locals is False


def test_bench_shows_its_steps_in_a_pipe_on_stderr():
    """Not a terminal (CI, a pipe): no spinner, but one stderr line per step (issue 22)."""
    res = runner.invoke(app, ["bench", "crypto", "--params", "20000", "--clients", "3"])
    assert res.exit_code == 0, res.output
    steps = [line for line in res.stderr.splitlines() if line.startswith("[cifer] ")]
    assert len(steps) >= 3, res.stderr
    assert "[cifer] " not in res.stdout  # stdout keeps the table only
    as_json = runner.invoke(
        app, ["bench", "crypto", "--params", "20000", "--clients", "3", "--json"]
    )
    assert "[cifer] " not in as_json.stderr  # --json: quiet


def test_identity_and_roster_for_masking(tmp_path):
    """cifer keygen --identity and cifer keys roster write what the key holders load."""
    from cifer_flwr import masking

    pubs = []
    for name in ("site-1", "site-2", "site-3"):
        res = runner.invoke(app, ["keygen", "--identity", "--name", name, "--dir", str(tmp_path)])
        assert res.exit_code == 0, res.output
        key = tmp_path / name / "identity.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert masking.load_identity(key).name == name
        pubs.append(str(tmp_path / name / "identity.pub"))
    again = runner.invoke(app, ["keygen", "--identity", "--name", "site-1", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "never overwritten" in again.output
    out = tmp_path / "roster.json"
    res = runner.invoke(app, ["keys", "roster", str(out), *pubs, "--min-cohort", "3"])
    assert res.exit_code == 0, res.output
    roster = masking.load_roster(out)
    assert sorted(roster.members) == ["site-1", "site-2", "site-3"] and roster.min_cohort == 3
    dup = runner.invoke(app, ["keys", "roster", str(out), pubs[0], pubs[0], "--force"])
    assert dup.exit_code == 2 and "appears twice" in dup.output


def test_bench_round_masking_json_small():
    res = runner.invoke(
        app, ["bench", "round", "--masking", "--clients", "5", "--params", "5000", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    masked = data["variants"]["packed+masking"]
    assert data["dropouts"] == 0 or data["dropouts"] == masked["dropouts_recovered"]
    for k in ("mask_client_s", "mask_bytes_per_client", "unmask_server_s", "max_abs_error"):
        assert masked[k] >= 0
    # the masked sum is as exact as the unmasked one (packed quantization only)
    assert masked["max_abs_error"] < 1e-5 and data["variants"]["packed"]["max_abs_error"] < 1e-5
