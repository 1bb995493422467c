"""Where the Triton server trtc runs comes from: found, or installed once into an environment of its own.

The server is the real `tritonserver` that PyPI's nvidia-pytriton wheel bundles (with its Python
backend and a backend stub per Python version). That wheel wants numpy<2, and the Python-backend
stub fails every response when numpy 2 is in its environment, so unless trtc's own environment
already has pytriton with numpy<2, the pinned wheels go into a separate virtual environment made
with the running interpreter, under the cache (`$TRTC_CACHE_DIR/triton/py311-<hash>`, default
`~/.cache/trtc/triton/...`). Model code still imports trtc, onnx and onnxruntime from trtc's own
environment: the model.py files trtc writes add the folders of `TRTC_SITE_PACKAGES` (set by
`server_environment`) behind the serving environment's own site-packages.

Installing is atomic (a temporary folder beside the final one, renamed when complete) and runs
under a file lock, so two test workers or two users asking at once install it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trtc.errors import TrtcError

# What the serving environment holds. numpy 1.26.4 is the last numpy<2 (wheels for Python 3.9-3.12);
# nvidia-pytriton 0.7.0 bundles tritonserver 2.51 with backend stubs for Python 3.8-3.13.
PINS: tuple[str, ...] = ("nvidia-pytriton==0.7.0", "numpy==1.26.4")

# The Triton backends the server gets (make_backend_dir): the wheel has no other. A model for the
# tensorrt or onnxruntime backend needs NGC's Triton container.
BACKENDS = frozenset({"python"})

# The environment variable the model.py files of a repository read trtc's own site folders from.
SITE_PACKAGES_VAR = "TRTC_SITE_PACKAGES"

Progress = Callable[[str], None]


class TritonUnavailable(TrtcError):
    """Triton's environment could not be installed (offline, no wheel for this Python): the user's
    machine lacks something, which tests may skip on, unlike every other failure here."""


@dataclass(frozen=True)
class TritonInstall:
    """A usable Triton: the server binary and what running it needs."""

    server: Path  # the tritonserver binary
    python_backend: Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for the running Python's major.minor
    lib_dirs: tuple[Path, ...]  # LD_LIBRARY_PATH: the wheel's bundled libraries, the interpreter's libpython
    env_bin: Path  # first on PATH: the stub runs model code in the environment of the first python3 there
    env_python: Path  # that environment's interpreter


def cache_root() -> Path:
    """trtc's cache folder: $TRTC_CACHE_DIR, else ~/.cache/trtc (engines, the Triton environment)."""
    return Path(os.environ.get("TRTC_CACHE_DIR", Path.home() / ".cache" / "trtc"))


def environment_dir() -> Path:
    """Where the serving environment for the running interpreter lives. The name holds the Python
    version and a hash of the pins and of the interpreter's install (the environment's python links
    to it), so a change of either gets a new environment instead of a stale one."""
    key = "\n".join([*PINS, os.path.realpath(sys.base_prefix)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return cache_root() / "triton" / f"py{sys.version_info.major}{sys.version_info.minor}-{digest}"


def triton_install(progress: Progress | None = None) -> TritonInstall:
    """trtc's own environment when it has pytriton with numpy<2; else the serving environment,
    installed on first use (`progress` hears about it: it takes a few seconds, or a download)."""
    own = _own_environment()
    if own is not None:
        return own
    target = environment_dir()
    found = _installed(target)
    if found is not None:
        return found
    with _locked(target.with_name(f"{target.name}.lock")):
        found = _installed(target)  # another process may have made it while this one waited
        if found is not None:
            return found
        if progress:
            progress(f"setting up Triton's environment (once): {' '.join(PINS)} into {target}")
        _provision(target)
    found = _installed(target)
    if found is None:
        raise TritonUnavailable(f"the environment at {target} holds no tritonserver after installing {' '.join(PINS)}")
    return found


def main_site_dirs() -> list[str]:
    """The folders trtc's own packages import from: the site folders of the running environment, and
    the folder holding the trtc package when it is elsewhere (a source checkout on sys.path)."""
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    trtc_parent = str(Path(__file__).resolve().parents[2])
    if not any(trtc_parent == d or trtc_parent.startswith(d.rstrip(os.sep) + os.sep) for d in dirs):
        dirs.append(trtc_parent)
    return dirs


def server_environment(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The process environment tritonserver runs with: the serving environment's bin first on PATH,
    its libraries and the interpreter's libpython first on LD_LIBRARY_PATH (else the stub may load
    another libpython of the same version and fail), and trtc's site folders in TRTC_SITE_PACKAGES."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(install.env_bin), *filter(None, [env.get("PATH")])])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, install.lib_dirs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env[SITE_PACKAGES_VAR] = os.pathsep.join(main_site_dirs())
    env.pop("PYTHONHOME", None)  # would send the stub's interpreter to another installation
    return env


def make_backend_dir(install: TritonInstall, parent: Path) -> Path:
    """A `--backend-directory` in `parent` holding BACKENDS: the Python backend (links to the wheel's
    files and to the stub for the running Python); returns it."""
    backends = parent / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for source in (install.python_backend / "libtriton_python.so",
                   install.python_backend / "triton_python_backend_utils.py", install.stub):
        (python / source.name).symlink_to(source)
    return backends


def _own_environment() -> TritonInstall | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        numpy_major = int(importlib.metadata.version("numpy").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    if numpy_major >= 2:
        return None
    site_dir = Path(next(iter(spec.submodule_search_locations))).parent
    return _layout(site_dir, Path(sys.executable).parent, Path(sys.executable))


def _installed(target: Path) -> TritonInstall | None:
    python = target / "bin" / "python"
    if not python.exists():  # also a link to an interpreter that is gone
        return None
    site_dir = target / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    return _layout(site_dir, target / "bin", python)


def _layout(site_dir: Path, env_bin: Path, env_python: Path) -> TritonInstall | None:
    """The install in `site_dir`, None when its server is missing; a one-line error when the wheel has
    no backend stub for the running Python (the stub embeds one Python version)."""
    root = site_dir / "pytriton" / "tritonserver"
    server = root / "bin" / "tritonserver"
    if not server.is_file():
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir() if p.is_dir())
        raise TritonUnavailable(f"the Triton server of {site_dir.parent.parent} has no Python backend for "
                                f"Python {version} (it has {', '.join(have) or 'none'})",
                                hint="run trtc with one of those Python versions to serve models")
    lib_dirs = [site_dir / "nvidia_pytriton.libs", Path(sysconfig.get_config_var("LIBDIR") or sys.base_prefix)]
    return TritonInstall(server=server, python_backend=root / "backends" / "python", stub=stub,
                         lib_dirs=tuple(d for d in lib_dirs if d.is_dir()), env_bin=env_bin, env_python=env_python)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (made with its folder when missing)."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")
    except OSError as exc:
        raise TritonUnavailable(f"cannot write Triton's environment into trtc's cache ({exc.strerror})",
                                where=str(lock_path.parent), hint="point TRTC_CACHE_DIR at a writable folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _provision(target: Path) -> None:
    """Make the environment in a temporary folder beside `target`, then rename it into place."""
    if target.exists():  # a broken one (its interpreter was removed): made again
        shutil.rmtree(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        own_pip = _pip_takes_python()
        venv = [sys.executable, "-m", "venv", *(["--without-pip"] if own_pip else []), str(staging)]
        _run(venv, "create a virtual environment")
        python = staging / "bin" / "python"
        pip = [sys.executable, "-m", "pip", "--python", str(python)] if own_pip else [str(python), "-m", "pip"]
        _run([*pip, "install", "-q", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:", *PINS],
             f"install {' '.join(PINS)}")
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _pip_takes_python() -> bool:
    """Whether this environment's pip can install into another interpreter (--python, pip >= 22.3):
    then the serving environment needs no pip of its own, which saves seconds."""
    if importlib.util.find_spec("pip") is None:
        return False
    try:
        major, minor = (int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (22, 3)


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        done = subprocess.CompletedProcess(command, 1, "", str(exc))
    if done.returncode == 0:
        return
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()]
    errors = [line for line in lines if line.lower().startswith("error")] or [line for line in lines if line]
    reason = errors[-1] if errors else f"exit code {done.returncode}"
    raise TritonUnavailable(
        f"could not {what} for Triton's environment ({reason})",
        hint=f"trtc serve runs the tritonserver of PyPI's nvidia-pytriton in an environment with numpy<2; "
             f"when online, run trtc serve again, or make it by hand: {sys.executable} -m venv {environment_dir()} && "
             f"{environment_dir()}/bin/pip install {' '.join(PINS)}")
