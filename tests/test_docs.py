"""Every environment variable the code reads is documented."""

from __future__ import annotations

import re

from gateway_core.config import PROJECT_ROOT

SOURCES = ["gateway_core", "proxy", "pages", "app.py"]
READ = re.compile(r"""(?:environ|env)(?:\.get\(|\[)["']((?:GATEWAYZ_|STRIPE_)[A-Z_]+|[A-Z_]+_URL)["']""")


def test_settings_documented() -> None:
    documented = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    names: set[str] = set()
    for source in SOURCES:
        path = PROJECT_ROOT / source
        files = [path] if path.is_file() else list(path.rglob("*.py"))
        for file in files:
            names.update(READ.findall(file.read_text()))
    assert "GATEWAYZ_SECRET" in names
    missing = sorted(name for name in names if f"`{name}`" not in documented)
    assert missing == [], f"add these to docs/configuration.md: {missing}"
