"""Which real components (container engines, apptainer, uv) this machine offers to tests.

``require(component)`` skips a test when the component is missing on a developer machine,
but fails it in CI (``CI=true``): a green CI run that skipped Docker would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

import pytest

TEST_IMAGE = os.environ.get("HITHER_TEST_IMAGE", "local/py3numpy:bookworm")


def _fail_or_skip(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {message}")
    pytest.skip(message)


@cache
def missing(component: str, images: tuple[str, ...] = (TEST_IMAGE,)) -> str | None:
    """Why ``component`` cannot be used here (None when it can); a Docker or Podman engine
    must hold ``images``."""
    if component in ("docker", "podman"):
        try:
            import docker
        except ImportError:
            return "the docker Python package"
        if component == "docker":
            cli, url = "docker", None
        else:
            cli, url = "podman", os.environ.get("HITHER_PODMAN_SOCKET")
            if not url:
                return "HITHER_PODMAN_SOCKET (a podman API service)"
        if shutil.which(cli) is None:
            return f"the {cli} CLI"
        try:
            client = docker.DockerClient(base_url=url, timeout=10) if url else \
                docker.from_env(timeout=10)
            for image in images:
                client.images.get(image)
        except Exception as e:
            return f"a {component} engine with the test images {', '.join(images)} ({e})"
        return None
    if component == "podman-cli":
        if shutil.which("podman") is None:
            return "the podman CLI"
        r = subprocess.run(["podman", "image", "inspect", TEST_IMAGE], capture_output=True,
                           text=True)
        if r.returncode != 0:
            return f"podman with image {TEST_IMAGE} ({r.stderr.strip()})"
        return None
    if component == "apptainer":
        exe = os.environ.get("HITHER_APPTAINER") or shutil.which("apptainer")
        sandbox = os.environ.get("HITHER_TEST_SANDBOX")
        if not exe or not sandbox or not os.path.isdir(sandbox):
            return "apptainer (HITHER_APPTAINER) and a sandbox (HITHER_TEST_SANDBOX)"
        return None
    if component == "apptainer-sif":
        sif = os.environ.get("HITHER_TEST_SIF")
        if not sif or not os.path.isfile(sif):
            return "a SIF image (HITHER_TEST_SIF)"
        return missing("apptainer")
    if component == "uv":
        try:
            from hither.runtimes.venv import find_uv

            find_uv()
        except Exception as e:
            return f"uv ({e})"
        return None
    if component == "two-uids":
        return _two_uids_missing()
    if component == "jupyter-kernel":
        try:
            import ipykernel  # noqa: F401
            import nbclient  # noqa: F401
            import nbformat  # noqa: F401
        except ImportError as e:
            return f"nbclient, nbformat and ipykernel ({e})"
        return None
    raise ValueError(f"unknown component {component!r}")


LAB_USERS = ("labA", "labB")
LAB_GROUP = "lab"


def lab_python() -> str:
    """The interpreter the lab users run: ``$HITHER_TEST_LAB_PYTHON`` (one they can read,
    with this checkout of hither installed), else this one."""
    import sys

    return os.environ.get("HITHER_TEST_LAB_PYTHON") or sys.executable


def _two_uids_missing() -> str | None:
    """Two real users of one group, and a Python they can run with this hither."""
    import grp
    import pwd

    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "root and setpriv, to run processes as the users labA and labB"
    try:
        members = grp.getgrnam(LAB_GROUP).gr_mem
        for user in LAB_USERS:
            pwd.getpwnam(user)
            if user not in members:
                return f"user {user} in group {LAB_GROUP}"
    except KeyError as e:
        return f"the users labA, labB and their group lab ({e})"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["setpriv", "--reuid", LAB_USERS[0], "--regid", LAB_USERS[0],
                        "--init-groups", "--", lab_python(), "-c",
                        "import hither, hither_store, s3fs, cryptography, diskcache; "
                        "print(hither.__file__)"],
                       capture_output=True, text=True, cwd="/")
    if r.returncode != 0 or not r.stdout.strip().startswith(here):
        return (f"a Python that user labA can run with this hither and hither[s3] "
                f"installed (HITHER_TEST_LAB_PYTHON; {lab_python()} gives: "
                f"{(r.stderr.strip().splitlines() or [r.stdout.strip()])[-1]})")
    return None


def require(component: str, images: tuple[str, ...] = (TEST_IMAGE,)) -> None:
    """Skip (developer machine) or fail (CI) unless ``component`` is usable."""
    why = missing(component, images)
    if why is not None:
        _fail_or_skip(why)
