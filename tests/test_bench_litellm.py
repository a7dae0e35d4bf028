"""The optional LiteLLM target of bench.proxy_overhead, without starting servers."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from bench.litellm_proxy import LiteLLMProxy, litellm_version, locate_litellm, write_config
from bench.load import LoadGenerator, LoadResult
from bench.proxy_overhead import CONCURRENCY, MODES, TARGETS, Results, format_report, parse_args


def make_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_locate_option_path(tmp_path: Path) -> None:
    executable = make_executable(tmp_path / "bin" / "litellm")
    found = locate_litellm(str(executable), environ={"PATH": ""})
    assert found == executable


def test_locate_option_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--litellm: .*nothing/litellm is not an executable"):
        locate_litellm(str(tmp_path / "nothing" / "litellm"), environ={})


def test_locate_option_not_executable(tmp_path: Path) -> None:
    plain = tmp_path / "litellm"
    plain.write_text("not a program\n")
    with pytest.raises(ValueError, match="is not an executable file"):
        locate_litellm(str(plain), environ={})


def test_locate_venv_variable(tmp_path: Path) -> None:
    executable = make_executable(tmp_path / "venv" / "bin" / "litellm")
    found = locate_litellm(None, environ={"LITELLM_VENV": str(tmp_path / "venv"), "PATH": ""})
    assert found == executable


def test_locate_venv_without_litellm(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LITELLM_VENV: "):
        locate_litellm(None, environ={"LITELLM_VENV": str(tmp_path)})


def test_locate_on_path(tmp_path: Path) -> None:
    executable = make_executable(tmp_path / "bin" / "litellm")
    found = locate_litellm(None, environ={"PATH": str(tmp_path / "bin")})
    assert found == executable


def test_locate_absent(tmp_path: Path) -> None:
    assert locate_litellm(None, environ={"PATH": str(tmp_path)}) is None


def test_version_of_shell_script(tmp_path: Path) -> None:
    executable = make_executable(tmp_path / "litellm")
    assert litellm_version(executable) == "(unknown version)"


def test_config_routes_to_upstream(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, "bench/any", "http://127.0.0.1:9000/v1")
    config = orjson.loads(path.read_bytes())
    [entry] = config["model_list"]
    assert entry["model_name"] == "bench/any"
    assert entry["litellm_params"]["model"].startswith("openai/")
    assert entry["litellm_params"]["api_base"] == "http://127.0.0.1:9000/v1"
    assert "database_url" not in config.get("general_settings", {})
    assert config["litellm_settings"]["callbacks"] == []
    assert config["litellm_settings"]["success_callback"] == []
    assert config["litellm_settings"]["failure_callback"] == []


def test_no_litellm_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_executable(tmp_path / "litellm")
    monkeypatch.setenv("PATH", str(tmp_path))
    args = parse_args(["--no-litellm"])
    assert args.litellm is None
    assert args.litellm_skipped == "--no-litellm was given"


def test_litellm_found_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    executable = make_executable(tmp_path / "litellm")
    monkeypatch.delenv("LITELLM_VENV", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert parse_args([]).litellm == executable


def fake_results(names: tuple[str, ...], rates: dict[str, float]) -> Results:
    """Build results where each target has a fixed rate and a latency of 1/rate s."""
    results = Results()
    for name in names:
        rate = rates[name]
        latency = LoadResult(1, 1, 0, 0, 1.0, 1000 / rate, 2000 / rate)
        for mode in MODES:
            results.latency[(name, mode)].append(latency)
            for clients in CONCURRENCY:
                run = LoadResult(int(rate), int(rate), 0, 0, 1.0, 1.0, 1.0)
                results.throughput[(name, mode, clients)].append(run)
    return results


def report_args(skipped: str | None) -> argparse.Namespace:
    return argparse.Namespace(
        rounds=1, chunks=20, requests=100, duration=1.0, litellm_skipped=skipped
    )


RATES = {
    "direct": 10_000,
    "pass-through": 2000,
    "gatewayz": 1000,
    "gatewayz+limits": 800,
    "litellm": 50,
}


def test_report_without_litellm(tmp_path: Path) -> None:
    results = fake_results(TARGETS, RATES)
    args = report_args("--no-litellm was given")
    report = format_report(args, results, LoadGenerator(tmp_path))
    assert "LiteLLM: not measured, because --no-litellm was given" in report
    rows = [line for line in report.splitlines() if line.startswith("litellm ")]
    assert rows == []
    assert "multiple of LiteLLM" not in report


def test_report_with_litellm(tmp_path: Path) -> None:
    results = fake_results((*TARGETS, "litellm"), RATES)
    proxy = LiteLLMProxy(None, "sk-test", tmp_path / "litellm", "1.0.0")  # type: ignore[arg-type]
    report = format_report(report_args(None), results, LoadGenerator(tmp_path), proxy)
    assert "litellm: LiteLLM 1.0.0" in report
    # 1000 / 50 and 800 / 50 requests/s.
    assert "json: Gatewayz throughput as a multiple of LiteLLM's: 20.0x at 16 clients" in report
    assert "stream: Gatewayz with limits throughput as a multiple of LiteLLM's: 16.0x" in report
    # Each fake latency run completed one request of the 100 requested.
    assert "(time bound reached after 1 requests)" in report
    # Latencies of 20 ms and 1 ms against 0.1 ms direct.
    assert "json: median added latency over direct: LiteLLM +19.90 ms, Gatewayz +0.90 ms" in report
