"""LiteLLM's proxy as an optional target of the proxy overhead benchmark.

LiteLLM is not a dependency of Gatewayz. Install it into a virtualenv of
its own, for example:

    python3 -m venv /opt/litellm && /opt/litellm/bin/pip install 'litellm[proxy]'

and point the benchmark at it with `--litellm /opt/litellm/bin/litellm` or
`LITELLM_VENV=/opt/litellm`; a `litellm` on the PATH is found too. Its proxy
runs through its own CLI with one uvicorn worker and no database. A config
file maps the benchmark's model name to the fake upstream as an
OpenAI-compatible model. The master key is random, and the load generator
sends it as its bearer token.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.stack import ServerProcess, free_port

VENV_ENV = "LITELLM_VENV"
READY_PATH = "/health/liveliness"
# A backstop: LiteLLM imports for a long time before it listens, for example
# 17 s for 1.108.7 on a shared 2-core machine at load average 10.
READY_TIMEOUT = 180.0
# The same prices as the Gatewayz target's override (1 and 2 USD per million
# tokens), so both proxies compute a cost for every response.
INPUT_COST_PER_TOKEN = 1e-6
OUTPUT_COST_PER_TOKEN = 2e-6

# Settings that keep LiteLLM quiet and off the network, read from LiteLLM
# 1.108.7's source. The LITELLM_LOCAL_* switches make it use its bundled
# model cost map and catalogs instead of fetching them from GitHub.
# LITELLM_TELEMETRY_DISABLED turns off the proxy's usage telemetry
# (litellm/proxy/telemetry/settings.py). LITELLM_TELEMETRY=False is set as
# well, although 1.108.7 does not read it.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_TELEMETRY_DISABLED": "True",
    "DISABLE_ADMIN_UI": "True",
    # Also sets uvicorn's log level, which silences its access log.
    "LITELLM_LOG": "ERROR",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "5",
}
# The only variables passed on from the benchmark's environment, so that a
# DATABASE_URL, Redis settings, HTTP proxy variables or provider keys there
# cannot change what LiteLLM does.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass
class LiteLLMProxy:
    server: ServerProcess
    master_key: str
    executable: Path
    version: str

    def wait_ready(self) -> None:
        self.server.wait_ready(READY_PATH, timeout=READY_TIMEOUT)

    @property
    def description(self) -> str:
        return (
            f"LiteLLM {self.version} ({self.executable}), one uvicorn worker, no database, "
            "master key auth"
        )


def locate_litellm(option: str | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Find the `litellm` executable to benchmark, or return None when there is none.

    `option` (the --litellm value) comes first, then `$LITELLM_VENV/bin/litellm`,
    then `litellm` on the PATH. Raise ValueError when `option` or LITELLM_VENV
    names no executable file, because the caller asked for that one.
    """
    if option is not None:
        candidate, source = Path(option), "--litellm"
    elif environ.get(VENV_ENV):
        candidate, source = Path(environ[VENV_ENV]) / "bin" / "litellm", VENV_ENV
    else:
        found = shutil.which("litellm", path=environ.get("PATH"))
        return Path(found) if found else None
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        raise ValueError(
            f"{source}: {candidate} is not an executable file; install LiteLLM into a "
            "virtualenv with `pip install 'litellm[proxy]'` and pass its bin/litellm with "
            f"--litellm or its folder in {VENV_ENV}"
        )
    return candidate.absolute()


def litellm_version(executable: Path) -> str:
    """Read the litellm package version with the interpreter in the executable's `#!` line.

    Return "(unknown version)" when the executable is not a Python script
    or its interpreter cannot import the package metadata.
    """
    try:
        with executable.open("rb") as file:
            first_line = file.readline().decode(errors="replace").strip()
    except OSError:
        return "(unknown version)"
    if not first_line.startswith("#!"):
        return "(unknown version)"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    command = [*shlex.split(first_line[2:]), "-c", code]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "(unknown version)"
    if completed.returncode != 0:
        return "(unknown version)"
    return completed.stdout.strip()


def write_config(path: Path, model_name: str, upstream_base_url: str) -> None:
    """Write a proxy config that serves `model_name` from the upstream, with no callbacks.

    JSON is valid YAML, which is the format LiteLLM reads.
    """
    config = {
        "model_list": [
            {
                "model_name": model_name,
                "litellm_params": {
                    # The `openai/` prefix selects LiteLLM's OpenAI-compatible client.
                    "model": "openai/bench-model",
                    "api_base": upstream_base_url,
                    # The fake upstream accepts any key.
                    "api_key": "bench-upstream-key",
                    "input_cost_per_token": INPUT_COST_PER_TOKEN,
                    "output_cost_per_token": OUTPUT_COST_PER_TOKEN,
                },
            }
        ],
        "litellm_settings": {"callbacks": [], "success_callback": [], "failure_callback": []},
    }
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))


def start_litellm(
    executable: Path, model_name: str, upstream_base_url: str, workdir: Path
) -> LiteLLMProxy:
    """Start LiteLLM's proxy on a free loopback port; the caller waits for READY_PATH.

    It runs in `workdir`, with HOME there too, so that it finds no `.env`
    file or user configuration of this machine.
    """
    home = workdir / "litellm"
    home.mkdir()
    config_path = home / "config.yaml"
    write_config(config_path, model_name, upstream_base_url)
    master_key = "sk-" + secrets.token_hex(32)
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env |= LITELLM_ENV
    env |= {"HOME": str(home), "LITELLM_MASTER_KEY": master_key}
    port = free_port()
    command = [str(executable), "--config", str(config_path), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--num_workers", "1"]
    server = ServerProcess("litellm", port, command, env, workdir, home)
    return LiteLLMProxy(server, master_key, executable, litellm_version(executable))
