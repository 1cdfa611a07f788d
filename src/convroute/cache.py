"""On-disk files of measurements (calibration profiles, autotune caches): where they live, how they are
written (atomically) and read (a corrupt file, another format, another device's file or one measured by
another build is refused with a warning, never an exception).

A measurement file is named by `device_file` (kind, device, dtype) and starts with `file_header`, which holds
the build stamp: convroute's version, a hash of the kernel modules and wgpu's version. Kernels rewritten or a
new wgpu make old timings and winners stale, so `read_json` refuses a file of another build. `load_once`
memoises what a file parses to on its mtime and size, so routing reads each file once per change;
`load_record` is both for one kind of measurement file.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import tempfile
import tomllib
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from convroute.settings import WEBGPU_IMPLEMENTATIONS, process_webgpu_implementation, shader_checks

KERNELS_DIR = Path(__file__).resolve().parent / "kernels"
TIMER_FILE = Path(__file__).resolve().parent / "measure" / "timing.py"


class CacheWarning(UserWarning):
    """A measurement file was refused or could not be written; convroute falls back and goes on."""


_WARNED: set[str] = set()
_LOADED: dict[Path, tuple[tuple[int, int], object]] = {}
T = TypeVar("T")


def warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        # explicit location: the message names the file or profile; a source line of convroute would not help
        warnings.warn_explicit(message.removeprefix("convroute: "), CacheWarning, "convroute", 0, module="convroute")


def cache_dir() -> Path:
    """CONVROUTE_CACHE_DIR, else $XDG_CACHE_HOME/convroute, else ~/.cache/convroute."""
    explicit = os.environ.get("CONVROUTE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "convroute"


def device_file(kind: str, device_key: str, dtype: str = "float32") -> Path:
    """`<cache>/<kind>-<readable device name>-<hash of the full key>.json`; measurements in another dtype than
    float32 go to `<kind>-<dtype>-...` (float32 files keep the names they had before dtypes existed)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_key.split("|")[0]).strip("-").lower()[:40] or "device"
    digest = hashlib.sha256(device_key.encode()).hexdigest()[:12]
    prefix = kind if dtype == "float32" else f"{kind}-{dtype}"
    implementation = process_webgpu_implementation()
    if implementation != "wgpu-native":  # its own files, so both implementations' can be kept
        prefix = f"{prefix}-{implementation}"
    return cache_dir() / f"{prefix}-{slug}-{digest}.json"


@functools.cache
def kernel_hash() -> str:
    """12 hex digits of sha256 over the code of every module under convroute/kernels (WGSL templates and
    the code that generates and launches them), in path order, then of the timer (measure/timing.py: how a
    time is taken is part of what a stored time means). Code without docstrings, comments and blank lines
    (`code_text`): editing what explains a kernel leaves its measurements valid."""
    digest = hashlib.sha256()
    for path in sorted(KERNELS_DIR.rglob("*.py")):
        digest.update(path.relative_to(KERNELS_DIR).as_posix().encode() + b"\0" + code_text(path) + b"\0")
    digest.update(code_text(TIMER_FILE))
    return digest.hexdigest()[:12]


def code_text(path: Path) -> bytes:
    """A module's lines without its docstrings (lines holding nothing else), comments and trailing blanks. A
    '#' starts a comment on a line that no string literal touches; a line with a string keeps all it holds, so
    a '#' inside a string (a WGSL template) stays code."""
    source = path.read_bytes()
    lines = source.decode().splitlines()
    dropped, strings = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            strings.update(range(node.lineno - 1, node.end_lineno))
        body = getattr(node, "body", None)
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or not body:
            continue
        first = body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            continue
        before = lines[first.lineno - 1].encode()[:first.col_offset]  # ast's offsets count UTF-8 bytes
        after = lines[first.end_lineno - 1].encode()[first.end_col_offset:]
        if not before.strip() and not after.strip():
            dropped.update(range(first.lineno - 1, first.end_lineno))
    kept = (line if i in strings else line.split("#", 1)[0] for i, line in enumerate(lines) if i not in dropped)
    return "\n".join(line.rstrip() for line in kept if line.strip()).encode()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return source_tree_version() if package == "convroute" else "unknown"


def source_tree_version() -> str:
    """convroute's version from the pyproject.toml beside src/ when it runs from a source tree without being
    installed (PYTHONPATH=src), so that such a run and an installed copy of the same code share measurement files."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


@functools.cache
def build_stamp() -> dict:
    """What a measurement file's results depend on besides the device: {convroute, kernels, wgpu}."""
    return {"convroute": _version("convroute"), "kernels": kernel_hash(), "wgpu": webgpu_version()}


def webgpu_version() -> str:
    """wgpu-py's version ("0.32.0"), or the other implementation's package and version ("wgpudawn 0.32.0.4"):
    Dawn compiles the same WGSL to other machine code, so its timings are another build's; and shaders with
    fewer run-time checks than all of naga's (settings.shader_checks) run faster, so theirs too."""
    implementation = process_webgpu_implementation()
    package = WEBGPU_IMPLEMENTATIONS[implementation]
    version = _version(package) if implementation == "wgpu-native" else f"{package} {_version(package)}"
    checks = shader_checks()
    return version if checks == "all" else f"{version} (shader checks: {checks})"


def describe_build(stamp: dict) -> str:
    return (f"convroute {stamp.get('convroute', '?')} with kernels {stamp.get('kernels', '?')} "
            f"and wgpu {stamp.get('wgpu', '?')}")


def file_header(fmt: str, version: int, device_key: str, dtype: str = "float32") -> dict:
    """The fields every measurement file starts with; `read_json` checks them all."""
    return {"format": fmt, "version": version, "device_key": device_key, "dtype": dtype, "build": build_stamp()}


def write_json(path: Path, data: dict) -> bool:
    """Write atomically (temp file + rename) so a crash never leaves half a file; False + warning on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared CONVROUTE_CACHE_DIR is read by other users
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        warn_once(f"convroute: could not write {path}: {err}; the result is kept in memory for this process only")
        return False
    return True


def read_json(path: Path, fmt: str, version: int, device_key: str | None, dtype: str = "float32", *,
              remedy: str = "", same_build: bool = True) -> dict | None:
    """The file's object when it exists and is a `fmt` file of `version` for `device_key` with measurements in
    `dtype` (files without a dtype are float32), made by this build (`build_stamp`); else None.

    A missing file is silent; anything else wrong gives one CacheWarning naming the file and the problem
    (`remedy`, e.g. "run `convroute calibrate`", is appended to a stale build's warning). `same_build=False`
    accepts files of any build: derived rules name algorithms, not timings of this build's kernels.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        warn_once(f"convroute: ignoring unreadable file {path}: {err}")
        return None
    problem = None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        data, problem = None, f"corrupt JSON ({err})"
    if problem is None and (not isinstance(data, dict) or data.get("format") != fmt):
        problem = f"not a {fmt} file"
    elif problem is None and data.get("version") != version:
        problem = f"format version {data.get('version')!r}, this convroute reads version {version}"
    elif problem is None and device_key is not None and data.get("device_key") != device_key:
        problem = f"made on another device or driver ({data.get('device_key')!r}, this one is {device_key!r})"
    elif problem is None and data.get("dtype", "float32") != dtype:
        problem = f"measured in {data.get('dtype')!r}, expected {dtype!r}"
    elif problem is None and same_build and data.get("build") != build_stamp():
        made = data.get("build")
        made = describe_build(made) if isinstance(made, dict) else "an older convroute (no build stamp)"
        problem = f"made by {made}; this is {describe_build(build_stamp())}" + (f"; {remedy}" if remedy else "")
    if problem:
        warn_once(f"convroute: ignoring {path}: {problem}")
        return None
    return data


def load_once(path: Path, parse: Callable[[Path], T | None]) -> T | None:
    """`parse(path)`, memoised on the file's mtime and size; None (parse not called) when there is no file."""
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _LOADED.get(path)
    if cached is None or cached[0] != stamp:
        cached = _LOADED[path] = (stamp, parse(path))
    return cached[1]


def load_record(path: Path, fmt: str, version: int, parse: Callable[[dict], T], what: str, device_key: str | None,
                dtype: str = "float32", *, remedy: str = "", same_build: bool = True) -> T | None:
    """The `fmt` file at `path` (checked by `read_json`) turned into a T by `parse`, read once per change
    (`load_once`); None when there is no file, with one warning when it is refused or `parse` raises."""

    def read(path: Path) -> T | None:
        data = read_json(path, fmt, version, device_key, dtype, remedy=remedy, same_build=same_build)
        if data is None:
            return None
        try:
            return parse(data)
        except Exception as err:  # whatever is wrong inside the file, refuse it rather than crash routing
            warn_once(f"convroute: ignoring {path}: malformed {what} ({type(err).__name__}: {err})")
            return None

    return load_once(path, read)


def forget() -> None:
    """Forget every file `load_once` read and every warning `warn_once` gave, as a new process would."""
    _LOADED.clear()
    _WARNED.clear()
