"""The serving environment: a small virtualenv holding ``nvidia-pytriton`` (Triton's server binary, its
python backend and the backend's stub) and numpy<2, which the stub is built against, while everything
else (torch, kiln, PIL, onnxruntime) comes from kiln's own environment through a ``.pth`` file. kiln's
environment keeps its numpy 2: installing the server never changes it.

Made once per kiln environment by ``kiln serve --setup`` (or the first ``kiln serve``), in
``~/.cache/kiln/serve-env-<id of kiln's environment>`` (it links that environment's packages), or in
``KILN_SERVE_ENV``. kiln replaces only a folder it made (its marker, written before anything else) or an
empty one: a folder of the user's is refused, never deleted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.console import log
from kiln.errors import KilnError

PYTRITON = "nvidia-pytriton==0.7.0"  # Triton server 2.51.0 with the python backend
PINS = ["numpy>=1.24,<2", PYTRITON]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def default_root() -> Path:
    if os.environ.get("KILN_SERVE_ENV"):
        return Path(os.environ["KILN_SERVE_ENV"]).expanduser()
    kiln_env = hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]  # one per kiln environment it links to
    return Path(f"~/.cache/kiln/serve-env-{kiln_env}").expanduser()


@dataclass(frozen=True)
class ServeEnv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return self.root / "lib" / f"python{PY}" / "site-packages"

    @property
    def tritonserver(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def backends(self) -> Path:
        """Triton's python backend with the stub for this Python beside it (the wheel keeps stubs apart)."""
        return self.root / "kiln-backends"

    @property
    def marker(self) -> Path:
        """kiln's mark on the folder: written first when the env is made (so a half-made one is still known
        as kiln's and may be replaced), rewritten with the versions when it is ready."""
        return self.root / "kiln-serve-env.txt"

    def is_kilns(self) -> bool:
        return self.marker.is_file()

    def ready(self) -> bool:
        try:  # the final marker starts with the versions; the first one says "being set up"
            made = self.marker.read_text().startswith(PYTRITON)
        except OSError:
            return False
        return made and self.tritonserver.is_file() and (self.backends / "python").is_dir()

    def server_environ(self) -> dict[str, str]:
        """The server's environment: the stub finds this env's python first on PATH (and so its numpy<2
        and the .pth to kiln's packages), and the libpython and Triton libraries it links."""
        env = dict(os.environ)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = [str(self.root / "lib"), str(self.libs), str(sysconfig.get_config_var("LIBDIR") or "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        return env


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise KilnError(
            f"serving environment: {what} failed ({tail}); check the network to PyPI, or set "
            "KILN_SERVE_ENV to a new or empty folder on a disk with 1 GB free"
        )


def claim(root: Path) -> None:
    """Make ``root`` kiln's, empty, before anything is installed in it. kiln removes only what it made: a
    folder holding its marker (an env, finished or not) or an empty one; any other folder is refused, its
    files untouched (KILN_SERVE_ENV=~/work must never cost ~/work)."""
    env = ServeEnv(root)
    if root.exists() and not root.is_dir():
        raise KilnError(f"KILN_SERVE_ENV: {root} is not a folder; set it to a new or empty folder")
    if root.is_dir() and any(root.iterdir()) and not env.is_kilns():
        raise KilnError(
            f"KILN_SERVE_ENV: {root} holds files kiln did not make; kiln never deletes them. Set "
            "KILN_SERVE_ENV to a new or empty folder for the serving environment"
        )
    try:
        if env.is_kilns():  # an env of kiln's, half made or stale: its contents go (the folder may be a link)
            for child in root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        root.mkdir(parents=True, exist_ok=True)
        env.marker.write_text(f"a kiln serving environment, being set up by pid {os.getpid()}\n")
    except OSError as e:
        raise KilnError(
            f"KILN_SERVE_ENV: cannot set up {root} ({e.strerror or e}); set it to a new or empty folder"
        ) from None


def create(root: Path) -> ServeEnv:
    """Make the environment (about 30 s and 400 MB: the wheel and numpy); returns it ready."""
    env = ServeEnv(root)
    t0 = time.perf_counter()
    claim(root)  # the marker first: from here on the folder is recognisably kiln's
    log(f"kiln: setting up the serving environment in {root} ({PYTRITON}, numpy<2; once)")
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter kiln's own venv was made from
    _run([base, "-m", "venv", str(root)], "creating a virtualenv")
    _run(
        [str(env.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
        f"pip install {' '.join(PINS)}",
    )
    # kiln and its packages, after this env's own (its numpy<2 comes first)
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    (env.site_packages / "kiln-env.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    )
    libpython = Path(sysconfig.get_config_var("LIBDIR") or "") / str(
        sysconfig.get_config_var("INSTSONAME") or ""
    )
    if libpython.is_file():  # the stub links libpython by name: this one, not another 3.x on the system
        (root / "lib" / libpython.name).unlink(missing_ok=True)
        (root / "lib" / libpython.name).symlink_to(libpython)
    server = env.tritonserver.parent.parent
    shutil.copytree(server / "backends" / "python", env.backends / "python")
    stub = server / "python_backend_stubs" / PY / "triton_python_backend_stub"
    if not stub.is_file():
        raise KilnError(f"serving environment: {PYTRITON} has no python backend stub for Python {PY}")
    shutil.copy2(stub, env.backends / "python" / stub.name)
    env.marker.write_text(f"{PYTRITON}\npython {PY}\nkiln env: {', '.join(dirs)}\n")
    log(f"kiln: serving environment ready ({time.perf_counter() - t0:.0f} s)")
    return env


def ensure(root: Path | None = None) -> ServeEnv:
    env = ServeEnv(root or default_root())
    return env if env.ready() else create(env.root)
