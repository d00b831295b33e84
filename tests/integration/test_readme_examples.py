"""The README's examples run as written: every command of "## Command line" and every curl of "## HTTP API".

The harness (tests/readme_examples.py) reads each section's ```bash blocks, whatever they hold, so examples
added later are run without edits here, and runs them with bash: a curl must get a 2xx, print JSON where
the response is JSON, and have the keys its output comment shows; a `# -> PATH` comment must name a path
the command wrote; an `alpro-serve` must become ready and exit 0 on SIGTERM.

* HTTP API: against the real app on loopback over a small index the indexer built (tests/integration/
  test_service_support.py: four videos, tiny retrieval and QA checkpoints); `localhost:8000` is rewritten
  to the live server's address, the only edit. A command that sends `X-API-Key: K` goes to a server whose
  ALPRO_API_KEY is K (the README says that header is for such a server), and that server must refuse the
  same request without the key.
* Command line: in a temp dir laid out as the repo (`configs/`, `.venv/`), from an environment without the
  venv on PATH, so the section's own `source .venv/bin/activate` must put the programs there. The fast test
  trains one step (`--set train.max_steps=1` appended to each `alpro-train`: the same configs, flags and
  paths, which the later commands read); the slow test runs the section verbatim (full demo training:
  minutes).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_service_support import free_socket, run_server, service_env  # noqa: F401
from tests.readme_examples import (README, ROOT, Command, parse_output_comment, section, section_commands,
                                   shape_problems, split_commands)
from tests.readme_runner import harness_env, run_section

VENV = ROOT / ".venv"
HOST = re.compile(r"(?<![\w.-])(?:localhost|127\.0\.0\.1):8000(?!\d)")  # the README's server address
API_KEY = re.compile(r"""-H\s*['"]?x-api-key:\s*([^'"\s]+)""", re.IGNORECASE)
FAST_TRAIN = " --set train.max_steps=1"


def _free_port() -> int:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def _report(problems: list[str]) -> str:
    return "the README's examples do not run as written:\n\n" + "\n\n".join(problems)


# --------------------------------------------------------------------------------------------------
# The parser (what the section runs depend on)


def test_commands_span_continuations_quotes_and_command_substitution():
    code = "\n".join([
        "source .venv/bin/activate          # on PATH",
        "alpro-index videos --data-dir data \\",
        "    --checkpoint ckpt                # -> data/index",
        "# prose about the next command, not an output",
        "",
        "ID=$(curl -s -X POST localhost:8000/search -d '{\"query\": \"a # b\"}' \\",
        "     | python3 -c 'import json, sys",
        "print(json.load(sys.stdin))')",
        "curl -s localhost:8000/x   # {\"a\": 1}",
        "curl -s localhost:8000/y",
        "# {\"b\": [{\"c\": \"...\"}, ...],",
        "#  \"d\": {...}}",
        "# and prose after it",
    ])
    commands = split_commands(code, first_line=10)
    assert [c.line for c in commands] == [10, 11, 15, 18, 19]
    assert commands[1].text.endswith("--checkpoint ckpt                # -> data/index")
    assert commands[1].code.endswith("--checkpoint ckpt") and commands[1].promised_paths == ["data/index"]
    assert commands[1].program == "alpro-index" and commands[0].program == "source"
    assert commands[2].program == "" and commands[2].calls_curl and commands[2].trailing == ""
    assert commands[3].output == '{"a": 1}' and commands[3].program == "curl"
    assert commands[4].output == '{"b": [{"c": "..."}, ...], "d": {...}}'
    assert commands[0].output is None and commands[1].output is None


def test_a_command_left_open_is_an_error():
    with pytest.raises(ValueError, match="never ends"):
        split_commands("curl -s localhost:8000/search -d '{\"query\": \n", first_line=1)


def test_sections_end_at_the_next_heading_not_at_a_shell_comment():
    markdown = "## A\n\n```bash\nx\n# {\"k\": 1}\ny\n```\n\n## B\n\n```bash\nz\n```\n"
    text, first = section(markdown, "A")
    assert first == 2 and "## B" not in text and "y" in text
    assert [c.text for c in section_commands("A", markdown)] == ["x", "y"]
    assert [c.text for c in section_commands("B", markdown)] == ["z"]


def test_output_comments_are_checked_by_shape_not_by_value():
    shape = parse_output_comment('{"q": "...", "results": [{"id": "3f...", "score": 0.6, "url": "/x"}, ...], '
                                 '"n": 3, "more": ..., "timings": {...}}')
    good = {"q": "a", "results": [{"id": "9", "score": 1, "url": None, "extra": 1}], "n": 1, "more": [],
            "timings": {"x": 1}}
    assert shape_problems(shape, good) == []
    assert shape_problems(shape, dict(good, results=[])) == ["$.results: the README shows elements, the output's "
                                                             "list is empty"]
    renamed = dict(good, results=[{"id": "9", "url": "/x", "scores": 1.0}])
    assert [p.split(" (")[0] for p in shape_problems(shape, renamed)] == ["$.results[0]: no key 'score'"]
    assert shape_problems(shape, dict(good, n="3")) == ["$.n: the README shows a number (3), the output has str"]
    assert parse_output_comment('{"a", "b"}') is None  # too loose: the harness then checks the keys it names


# --------------------------------------------------------------------------------------------------
# HTTP API


def _http_commands() -> list[Command]:
    commands = section_commands("HTTP API")
    assert any(c.calls_curl for c in commands), "the HTTP API section has no curl example"
    return commands


@pytest.fixture(scope="module")
def servers(service_env):
    """The plain server (QA on, no key) under None, and one per API key the README's examples send."""
    keys = {m.group(1) for c in _http_commands() for m in API_KEY.finditer(c.code)}
    with contextlib.ExitStack() as stack:
        live = {None: stack.enter_context(run_server(service_env.settings()))}
        for key in keys:
            live[key] = stack.enter_context(run_server(service_env.settings(api_key=key)))
        yield live


def _run_http(commands: list[Command], servers, tmp_path: Path):
    def rewrite(command: Command) -> str:
        key = API_KEY.search(command.code)
        return HOST.sub(servers[key.group(1) if key else None].url.removeprefix("http://"), command.text)

    env = harness_env(tmp_path, path_front=[VENV / "bin"])  # python3 for the examples that read JSON
    return run_section(commands, tmp_path, env, timeout_s=300, rewrite=rewrite)


def test_http_api_examples_run_against_a_live_server(servers, tmp_path):
    commands = _http_commands()
    started = time.monotonic()
    run = _run_http(commands, servers, tmp_path)
    problems = run.problems()
    # "when ALPRO_API_KEY is set": the keyed server must want the key for what the example asks
    for request in run.requests:
        key = API_KEY.search(commands[request["command"]].code)
        if key:
            try:
                with urllib.request.urlopen(request["url"], timeout=30) as response:
                    status = response.status
            except urllib.error.HTTPError as e:
                status = e.code
            if status != 401:
                problems.append(f"{commands[request['command']]}\n    without its X-API-Key the keyed server "
                                f"answered {status}, not 401: the key is not what this example needs")
    assert not problems, _report(problems)
    assert run.requests, "no request was made"
    print(f"{len(commands)} HTTP API commands, {len(run.requests)} requests in {time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("old, new, expected", [
    ("localhost:8000/search", "localhost:8000/serch", "HTTP 404"),  # a renamed route
    ('"reranked": 20', '"re_ranked": 20', "no key 're_ranked'"),  # an output comment's key the API lacks
    ('"top_k": 3', '"topk": 3', "HTTP 422"),  # a renamed field of the body
])
def test_http_api_drift_fails(servers, tmp_path, old, new, expected):
    """The harness fails on drift, as it would on the real README's (each edit is in its HTTP section)."""
    text, first = section(README.read_text(), "HTTP API")
    assert old in text, f"the README's HTTP API section no longer holds {old!r}: pick another drift to test"
    markdown = "## HTTP API\n" + text.replace(old, new, 1)
    run = _run_http(section_commands("HTTP API", markdown), servers, tmp_path)
    problems = "\n".join(run.problems())
    assert expected in problems, problems


# --------------------------------------------------------------------------------------------------
# Command line


def _demo_layout(root: Path) -> Path:
    """A temp dir laid out as the repo before `make demo` writes demo-data/ (configs and the venv)."""
    assert (VENV / "bin" / "activate").exists(), f"no venv at {VENV} (make install)"
    root.mkdir(parents=True, exist_ok=True)
    (root / "configs").symlink_to(ROOT / "configs")
    (root / ".venv").symlink_to(VENV)
    return root


def _cli_env(root: Path) -> dict[str, str]:
    # the venv off PATH: the section's `source .venv/bin/activate` must bring the programs; the port a free
    # one, through ALPRO_PORT (not an edit: the example's alpro-serve takes its port from there)
    running = [Path(sys.prefix) / "bin"] if sys.prefix != sys.base_prefix else []  # the venv running pytest
    return harness_env(root, drop_path=[VENV / "bin", *running], extra={"ALPRO_PORT": str(_free_port())})


def test_command_line_section_uses_the_paths_the_demo_writes():
    """Every path scripts/demo.sh writes for the steps the README shows is the README's path."""
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    demo_dir = re.search(r'^DEMO_DIR="\$\{DEMO_DIR:-([^}]+)\}"', demo, re.M).group(1)
    paths = {name: value.replace("$DEMO_DIR", demo_dir)
             for name, value in re.findall(r'^(CORPUS|RET|QA|DATA)="([^"]+)"', demo, re.M)}
    assert set(paths) == {"CORPUS", "RET", "QA", "DATA"}, paths
    text = " ".join(c.code for c in section_commands("Command line"))
    for expected in (paths["CORPUS"], f"{paths['CORPUS']}/videos", f"{paths['RET']}/final",
                     f"{paths['QA']}/final", paths["DATA"]):
        assert re.search(rf"(^|\s|=){re.escape(expected)}(\s|$)", text), \
            f"the Command line section never uses {expected}, which scripts/demo.sh writes"


def test_command_line_examples_run_in_a_demo_layout(tmp_path):
    """Every command, in order; training one step (the same configs, flags and output paths)."""
    commands = section_commands("Command line")
    assert any(c.program == "alpro-serve" for c in commands), "the Command line section lost its alpro-serve"
    root = _demo_layout(tmp_path / "repo")
    started = time.monotonic()
    run = run_section(commands, root, _cli_env(root), timeout_s=600,
                      rewrite=lambda c: c.code + FAST_TRAIN if c.program == "alpro-train" else c.text)
    assert not run.problems(), _report(run.problems())
    print(f"{len(commands)} commands in {time.monotonic() - started:.1f} s\n{run.timing_report()}")


def test_command_line_drift_fails(tmp_path):
    """A renamed flag of the long-running server fails at once (it exits before it is ready), not at a
    deadline; a renamed path of a command fails it."""
    root = _demo_layout(tmp_path / "repo")
    code = "source .venv/bin/activate\nalpro-serve --data-dirr demo-data/data"
    started = time.monotonic()
    run = run_section(split_commands(code), root, _cli_env(root), timeout_s=120)
    problems = "\n".join(run.problems())
    assert "the server exited before it was ready" in problems and "--data-dirr" in problems, problems
    assert time.monotonic() - started < 60
    run = run_section(split_commands("source .venv/bin/activate\nalpro-eval retrieval --checkpoint nowhere/final "
                                     "--annotations nowhere/test.jsonl"), root, _cli_env(root), timeout_s=120)
    assert "stopped with exit status" in "\n".join(run.problems())


@pytest.mark.slow
def test_command_line_examples_run_verbatim(tmp_path):
    """The whole section exactly as written, the demo's full training included (minutes on 2 cores)."""
    commands = section_commands("Command line")
    root = _demo_layout(tmp_path / "repo")
    started = time.monotonic()
    run = run_section(commands, root, _cli_env(root), timeout_s=3600)
    assert not run.problems(), _report(run.problems())
    print(f"{len(commands)} commands in {time.monotonic() - started:.1f} s\n{run.timing_report()}")
