"""The documentation stays true to the repository: its commands parse, the files it cites exist."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "design.md", ROOT / "docs" / "results.md",
        ROOT / "bench" / "results" / "README.md"]
RESULTS = ROOT / "bench" / "results"


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _commands(text: str, program: str) -> list[list[str]]:
    """Every `program ...` line of the bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in _bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(program + " "):
                out.append(shlex.split(line)[1:])
    return out


def test_readme_is_short_with_a_table_of_contents():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    toc = re.findall(r"^- \[(.+?)\]\(#", text, flags=re.M)
    assert toc == [h for h in headings if h != "Contents"]


def test_every_heteromoe_command_of_the_readme_parses():
    from heteromoe.cli import build_parser

    commands = _commands((ROOT / "README.md").read_text(), "heteromoe")
    assert len(commands) >= 4
    parser = build_parser()
    for argv in commands:
        argv = [a if "$(" not in a else "[1]" for a in argv]  # a shell substitution: any JSON list
        args = parser.parse_args(argv)
        assert callable(args.func), argv


def test_every_cited_result_file_exists():
    cited = set()
    for doc in DOCS:
        cited |= set(re.findall(r"bench/results/([A-Za-z0-9_.\-]+\.(?:json|txt|log|png))", doc.read_text()))
    cited |= set(re.findall(r"`([A-Za-z0-9_.\-]+\.(?:json|txt|log|png))`", (RESULTS / "README.md").read_text()))
    missing = sorted(name for name in cited if not (RESULTS / name).exists()
                     and not (ROOT / "heteromoe" / "spec" / "presets" / "gpu_tables" / name).exists())
    assert not missing, f"cited but absent from bench/results: {missing}"


def test_every_result_file_is_indexed():
    index = (RESULTS / "README.md").read_text()
    patterns = [re.escape(p).replace(r"\*", ".*") for p in re.findall(r"`([A-Za-z0-9_.\-*]+)`", index)]
    for path in RESULTS.iterdir():
        if path.name == "README.md":
            continue
        assert any(re.fullmatch(p, path.name) for p in patterns), f"{path.name} is not in bench/results/README.md"


@pytest.mark.parametrize("doc", DOCS[:3], ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
