"""Service settings: environment variables with a documented prefix, flags over them, clear errors; the
container health probe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from remoe import probe
from remoe.cluster import free_port
from remoe.server.common import Server
from remoe.settings import (
    SERVICES,
    BackboneSettings,
    GatewaySettings,
    SchedulerSettings,
    env_for,
    load_settings,
    parser_for,
    reference_markdown,
)

ROOT = Path(__file__).resolve().parents[1]


def test_environment_configures_a_service_and_flags_override_it(monkeypatch):
    monkeypatch.setenv("REMOE_GATEWAY_MODEL", "/models/m")
    monkeypatch.setenv("REMOE_GATEWAY_BACKBONE", "backbone:50052")
    monkeypatch.setenv("REMOE_GATEWAY_SLO_TTFT_MS", "250")
    monkeypatch.setenv("REMOE_GATEWAY_PREWARM", "false")
    s = load_settings(GatewaySettings, ["--slo-ttft-ms", "100"], "gateway", "")
    assert (s.model, s.backbone, s.slo_ttft_ms, s.prewarm, s.port) == (
        Path("/models/m"),
        "backbone:50052",
        100,
        False,
        50051,
    )
    assert load_settings(GatewaySettings, ["--prewarm"], "gateway", "").prewarm is True


def test_an_empty_variable_means_unset(monkeypatch):
    monkeypatch.setenv("REMOE_SCHEDULER_MODEL", "/m")
    monkeypatch.setenv("REMOE_SCHEDULER_PROFILE", "")  # compose's ${REMOE_SCHEDULER_PROFILE:-}
    assert load_settings(SchedulerSettings, [], "scheduler", "").profile is None


def test_bad_or_missing_settings_exit_naming_the_flag_and_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("REMOE_BACKBONE_REMOTE_RATIO", "1.5")
    with pytest.raises(SystemExit) as e:
        load_settings(BackboneSettings, [], "backbone", "")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--model / REMOE_BACKBONE_MODEL: Field required" in err
    assert "--remote-ratio / REMOE_BACKBONE_REMOTE_RATIO" in err and "less than or equal to 1" in err
    with pytest.raises(SystemExit):
        load_settings(BackboneSettings, ["--model", "m", "--experts", "nohostport"], "backbone", "")
    assert "'nohostport' is not HOST:PORT" in capsys.readouterr().err


def test_expert_addresses_come_as_a_comma_list_or_repeated_flags(monkeypatch):
    monkeypatch.setenv("REMOE_BACKBONE_EXPERTS", "expert-0:50061, expert-1:50061")
    assert load_settings(BackboneSettings, ["--model", "m"], "b", "").experts == ["expert-0:50061", "expert-1:50061"]
    s = load_settings(BackboneSettings, ["--model", "m", "--expert", "a:1@0/2", "--expert", "b:2"], "b", "")
    assert s.experts == ["a:1", "b:2"]  # flags win; the older ADDRESS@INDEX/COUNT form still parses


def test_env_for_round_trips_and_refuses_unknown_names(monkeypatch):
    env = env_for(BackboneSettings, model=Path("/m"), experts=["a:1", "b:2"], verbose=True, plan=None, port=0)
    assert env == {
        "REMOE_BACKBONE_MODEL": "/m",
        "REMOE_BACKBONE_EXPERTS": "a:1,b:2",
        "REMOE_BACKBONE_VERBOSE": "true",
        "REMOE_BACKBONE_PORT": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings(BackboneSettings, [], "b", "")
    assert (s.model, s.experts, s.verbose, s.port) == (Path("/m"), ["a:1", "b:2"], True, 0)
    with pytest.raises(KeyError, match="no setting modle"):
        env_for(BackboneSettings, modle="/m")


@pytest.mark.processes
def test_every_service_help_lists_its_variables():
    for service, cls in SERVICES.items():
        text = parser_for(cls, service, "").format_help()
        for name in cls.model_fields:
            assert f"{cls.model_config['env_prefix']}{name.upper()}" in text.replace("\n", "").replace(" ", ""), name
    out = subprocess.run(
        [sys.executable, "-m", "remoe.services.scheduler", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "REMOE_SCHEDULER_PROFILE" in out


def test_the_configuration_reference_is_current():
    committed = (ROOT / "docs/configuration.md").read_text()
    assert committed == reference_markdown(), "docs/configuration.md is stale: python -m remoe.settings > it"


def test_the_probe_reads_each_service_port_from_its_environment():
    assert probe.address_of("gateway", {"REMOE_GATEWAY_PORT": "6000"}) == "127.0.0.1:6000"
    assert probe.address_of("function", {"PORT": "9000"}) == "127.0.0.1:9000"


def test_the_probe_passes_a_serving_server_and_fails_a_missing_or_stopping_one():
    server = Server("probe-test", "127.0.0.1", 0, workers=2)
    port = server.start()
    try:
        assert probe.main(["--address", f"127.0.0.1:{port}"]) == 0
        server.health.enter_graceful_shutdown()  # NOT_SERVING while it drains
        assert probe.main(["--address", f"127.0.0.1:{port}"]) == 1
    finally:
        server.server.stop(0).wait()
    assert probe.main(["--address", f"127.0.0.1:{free_port()}", "--timeout", "0.5"]) == 1
