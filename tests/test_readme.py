"""The README is a user's guide: short, no work-log words, no paths that a clone does not have, every command
documented. (Its history lives in NOTES.md.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from convroute.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 200
# what the README's own set-up command creates, so a clean clone does not have it yet
CREATED_BY_SETUP = (".venv",)
FILE_SUFFIXES = (".py", ".sh", ".json", ".md", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".wgsl")
WORK_LOG = [
    (re.compile(r"\bsessions?\b", re.IGNORECASE), "the word 'session'"),
    (re.compile(r"\bcalls? \d", re.IGNORECASE), "a numbered call"),
    (re.compile(r"\.carry\b"), "the ignored .carry folder"),
    (re.compile(r"shared bench README", re.IGNORECASE), "the shared bench README"),
]


def work_log_words(text: str) -> list[str]:
    """'line N: what' for every work-log word in `text`."""
    return [f"line {n}: {what}: {line.strip()[:80]}" for n, line in enumerate(text.splitlines(), 1)
            for pattern, what in WORK_LOG if pattern.search(line)]


def mentioned_paths(text: str) -> set[str]:
    """Repository paths the text names: backticked words that look like paths (a folder/file with a known
    suffix, or one starting with '.'), and the scripts of `python X.py` and `bash X`."""
    paths = set(re.findall(r"\b(?:python3?|bash)\s+((?:\.?[\w-]+/)*[\w.-]+\.(?:py|sh)|\.?[\w-]+/[\w./-]+)", text))
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)  # fenced blocks are Python
    for span in re.findall(r"`([^`]+)`", prose):  # an inline span may run over a line break
        for word in re.findall(r"[\w./*-]+", span):
            word = word.rstrip(".")
            if word.startswith(("/", "~", "$")) or "//" in word:
                continue
            looks_like_path = ("/" in word and (word.endswith(FILE_SUFFIXES) or word.startswith(".")
                                                or word.endswith("/")))
            bare_script = "/" not in word and word.endswith((".py", ".sh", ".md", ".toml"))
            if looks_like_path or bare_script:
                paths.add(word)
    return paths


def tracked_files() -> set[str] | None:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.splitlines())


def missing_paths(paths: set[str]) -> list[str]:
    """The paths that are neither files or folders in the repository (tracked by git, when git is here) nor
    created by the set-up command."""
    tracked = tracked_files()
    folders = {str(p) for f in tracked or () for p in Path(f).parents}
    missing = []
    for path in sorted(paths):
        clean = path.rstrip("/")
        if clean.split("/")[0] in CREATED_BY_SETUP:
            continue
        if tracked is None:
            found = (ROOT / clean).exists()
        else:
            found = clean in tracked or clean in folders or "*" in clean and any(
                Path(f).match(clean) for f in tracked)
        if not found:
            missing.append(path)
    return missing


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; a user's guide keeps to {MAX_LINES}"


def test_readme_has_no_work_log_words():
    assert work_log_words(README.read_text()) == []


def test_readme_names_only_paths_the_repository_has():
    paths = mentioned_paths(README.read_text())
    # the parser sees the README's own paths
    assert {".ci/run", "tools/check_models.py", "src/convroute/bench/suites/resnet18.json"} <= paths
    assert missing_paths(paths) == []


def test_readme_documents_every_command():
    text = README.read_text()
    assert [name for name in COMMANDS if f"convroute {name}" not in text] == []


def test_the_checks_catch_a_work_log_readme():
    text = ("On an H100 0.85-1.21 ms over sessions 3-6. Session 12, call 5 (a fast host). ncnn 298 ms per the "
            "shared bench README; `.carry/scripts/s8c1.sh`, `python tools/no_such_tool.py`, `tools/check_models.py`,"
            " `bash .ci/run`, `add/sub/mul`, `~/.cache/convroute`, `.venv/bin/pip`")
    assert len(work_log_words(text)) == 4
    assert missing_paths(mentioned_paths(text)) == [".carry/scripts/s8c1.sh", "tools/no_such_tool.py"]
