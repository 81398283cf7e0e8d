"""The README stays true: its quick start runs as written against a real server, its commands parse, its
settings table matches `Settings`, its links resolve and every document in docs/ is linked."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess, free_port
from iotgate.cli import build_parser
from iotgate.config import Settings, field_names

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Where `iotgate` and `python` of this environment live: the README's commands run with them first on PATH.
BIN = str(Path(sys.executable).parent)
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}")


def section(title: str) -> str:
    """The text of the README section whose `## ` heading starts with `title`."""
    parts = re.split(r"^## ", README, flags=re.M)
    found = [p for p in parts if p.startswith(title)]
    assert len(found) == 1, f"README has no single '## {title}' section"
    return found[0]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def user_env() -> dict[str, str]:
    """A new user's environment: no iotgate variables, this environment's bin directory first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTGATE_")}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's working directory; the server keeps its data in ./iotgate-data as with no settings."""
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def readme_server(user_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(user_dir / "iotgate-data").start()
    yield proc
    proc.stop()


def iotgate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `iotgate` command, run where the user runs it."""
    return subprocess.run(
        ["iotgate", *args], cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=60, check=False
    )


# -- the two commands ---------------------------------------------------------------------------
def test_two_commands_are_the_documented_ones() -> None:
    two = section("Two commands")
    assert code_blocks(two, "bash")[0].strip() == "pip install . && iotgate serve"
    assert code_blocks(two, "bash")[1].strip() == "python -m pytest -q"
    # CI runs the same test command, and the README says so
    assert "bash .ci/run" in section("Tests")
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    # the default ports and data dir the README states are the real defaults
    defaults = Settings()
    assert f"https://{defaults.device_host}:{defaults.device_port}" in two
    assert f"http://{defaults.admin_host}:{defaults.admin_port}" in two
    assert f"`{defaults.data_dir.removeprefix('./')}`" in two or f"`{defaults.data_dir}`" in two


def test_a_taken_port_stops_serve_with_address_already_in_use(readme_server: ServerProcess, tmp_path: Path) -> None:
    """The README tells users what they see when 8080/8443 are taken; both listeners fail the same clean way."""
    assert "address already in use" in section("Two commands")
    for taken in ("--admin-port", "--device-port"):
        ports = {"--admin-port": str(free_port()), "--device-port": str(free_port())}
        ports[taken] = str(readme_server.admin_port if taken == "--admin-port" else readme_server.device_port)
        cmd = [sys.executable, "-m", "iotgate.cli", "serve", "--data-dir", str(tmp_path / taken)]
        cmd += ["--device-host", "127.0.0.1", *(x for kv in ports.items() for x in kv)]
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            env=user_env(),
        )
        assert out.returncode == 2, out.stdout + out.stderr
        text = " ".join((out.stdout + out.stderr).split()).lower()
        assert "address already in use" in text and "traceback" not in text, text


# -- the quick start, run as written ------------------------------------------------------------
def test_quick_start_runs_as_written(readme_server: ServerProcess, user_dir: Path) -> None:
    quick = section("Quick start")
    [script] = code_blocks(quick, "bash")
    # The one change: this server's device port instead of the default 8443.
    default_url = "https://127.0.0.1:8443"
    assert script.count(default_url) == 1, "the quick start's device endpoint moved; update this test"
    script = script.replace(default_url, readme_server.device_url)
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=user_dir,
        env={**user_env(), "COLUMNS": "200"},  # tables wide enough not to wrap the texts checked below
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert re.search(r"^messageId \d{15,}$", out.stdout, flags=re.M), out.stdout
    assert re.search(r"^rejected: 30001: .*temperature: 99 is above max 50$", out.stdout, flags=re.M), out.stdout
    assert "°C" in out.stdout and TIMESTAMP.search(out.stdout), out.stdout  # tables show local times
    assert (user_dir / "model.json").exists()

    # What the server now holds is what the README promises.
    with readme_server.admin() as client:
        admin = Admin(client)
        products = client.get("/api/v1/products").json()["items"]
        [pk] = [p["productKey"] for p in products if p["name"] == "collector"]
        model = client.get(f"/api/v1/products/{pk}/thing-model", params={"version": "latest"}).json()
        assert [p["identifier"] for p in model["properties"]] == ["temperature", "humidity"]
        status = admin.properties(pk, "collector-01")
        assert (status["temperature"]["value"], status["humidity"]["value"]) == (23, 45)
        history = client.get(f"/api/v1/products/{pk}/devices/collector-01/properties/temperature/history").json()
        assert [p["value"] for p in history["items"]] == [23]
        [rejected] = admin.messages(pk, "collector-01", "rejected")
        assert "above max 50" in rejected["reason"]
        # printed by the snippet, then listed by `iotgate device messages --kind rejected`
        assert out.stdout.count("temperature: 99 is above max 50") == 2, out.stdout


def test_quick_start_model_is_the_seed_model() -> None:
    """The README's model.json is the model the rest of the tests (and docs/devices.md) call the seed model."""
    [script] = code_blocks(section("Quick start"), "bash")
    doc = re.search(r"<<'JSON'\n(.*?)\nJSON\n", script, flags=re.S)
    assert doc is not None
    assert json.loads(doc.group(1)) == SEED_MODEL


# -- every command the README shows is a real command -------------------------------------------
def readme_commands() -> list[str]:
    """`iotgate ...` command lines from the README's shell blocks and inline code."""
    found: list[str] = []
    for block in code_blocks(README, "bash"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            found += re.findall(r"\$\((iotgate [^)]*)\)", line)
            if line.startswith("iotgate "):
                found.append(line)
    for span in re.findall(r"`([^`\n]+)`", README):
        found += [part.strip() for part in span.split("&&") if part.strip().startswith("iotgate ")]
    return found


def test_readme_commands_parse() -> None:
    commands = readme_commands()
    verbs = {shlex.split(c)[1] for c in commands}
    assert {"serve", "product", "device", "simulate", "config"} <= verbs, verbs
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse reports a bad command line by exiting
            pytest.fail(f"README command does not parse ({exc.code}): {command}")


# -- the CLI behaviour the quick start relies on ------------------------------------------------
def test_field_and_json_output_for_scripts(readme_server: ServerProcess, user_dir: Path, tmp_path: Path) -> None:
    out = iotgate(user_dir, "product", "create", "--name", "scripted", "--field", "productKey")
    assert out.returncode == 0, out.stderr
    pk = out.stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9]{11}", pk), out.stdout

    model = tmp_path / "model.json"
    model.write_text(json.dumps(SEED_MODEL))
    out = iotgate(user_dir, "product", "import-model", pk, str(model), "--publish", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"productKey": pk, "version": 1}  # the notice goes to stderr
    assert "publish it to use it" not in out.stderr

    secrets = [
        iotgate(user_dir, "device", "add", pk, "--name", f"scr-{i}", "--field", "deviceSecret") for i in range(2)
    ]
    assert all(s.returncode == 0 and re.fullmatch(r"\w{32}\n", s.stdout) for s in secrets), secrets
    listed = iotgate(user_dir, "device", "list", pk, "--field", "deviceName")
    assert sorted(listed.stdout.split()) == ["scr-0", "scr-1"], listed.stdout
    shown = iotgate(user_dir, "device", "show", pk, "scr-0", "--field", "deviceSecret")
    assert shown.stdout == secrets[0].stdout

    bad = iotgate(user_dir, "device", "show", pk, "scr-0", "--field", "nope")
    assert bad.returncode == 1 and "no field 'nope'" in bad.stderr and "deviceSecret" in bad.stderr
    short = iotgate(user_dir, "device", "add", pk, "--name", "ab")  # the error names the field as the user sent it
    assert short.returncode == 1 and "422 invalid: deviceName 'ab': 4-32 characters" in short.stderr, short.stderr
    # --field is offered where there is a result to pick from, not on delete
    assert iotgate(user_dir, "device", "delete", pk, "scr-1", "--field", "x").returncode == 2


def test_healthz_and_console_as_documented(readme_server: ServerProcess) -> None:
    assert "/healthz" in section("Two commands")
    assert httpx.get(readme_server.admin_url + "/healthz", timeout=10).status_code == 200
    console = httpx.get(readme_server.admin_url + "/", timeout=10, follow_redirects=True)
    assert console.status_code == 200 and "text/html" in console.headers["content-type"]


# -- the configuration table --------------------------------------------------------------------
def test_configuration_table_matches_settings() -> None:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section("Configuration").splitlines()
        if line.startswith("| `")
    ]
    assert len(rows) >= 10
    defaults = Settings()
    names = set(field_names())
    for setting, default, _meaning in rows:
        flags = re.findall(r"`--([a-z0-9-]+)`", setting)
        assert flags, f"no flag in {setting!r}"
        for var in re.findall(r"IOTGATE_([A-Z0-9_]+)", setting):
            assert var.lower() in names, var
        shown = [d.strip().strip("`") for d in default.split(" / ")]
        for i, flag in enumerate(flags):
            name = flag.replace("-", "_")
            assert name in names, f"--{flag} is not a setting"
            real = getattr(defaults, name)
            value = shown[i] if len(shown) == len(flags) else shown[0]
            if isinstance(real, bool):
                assert value == ("on" if real else "off"), (flag, value)
            elif isinstance(real, int | float):
                assert float(value) == real, (flag, value, real)
            elif real == "":
                assert " " in value, (flag, value)  # empty by default: the table says what happens instead
            else:
                assert value == real, (flag, value, real)


# -- links --------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_resolve_and_every_doc_is_linked() -> None:
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local
    for target in local:
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.exists(), f"README links to a missing file: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"no heading for #{anchor} in {path}"
    linked = {t.partition("#")[0] for t in local}
    docs = sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
    missing = [d for d in docs if d not in linked]
    assert not missing, f"docs not linked from the README's Documentation section: {missing}"
    listed = re.findall(r"^- \[(docs/[\w.-]+\.md)\]\(\1\)", section("Documentation"), flags=re.M)
    assert sorted(listed) == docs, "the Documentation section lists each docs/*.md exactly once"
