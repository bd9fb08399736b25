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
    if component == "jupyter-kernel":
        try:
            import ipykernel  # noqa: F401
            import nbclient  # noqa: F401
            import nbformat  # noqa: F401
        except ImportError as e:
            return f"nbclient, nbformat and ipykernel ({e})"
        return None
    raise ValueError(f"unknown component {component!r}")


def require(component: str, images: tuple[str, ...] = (TEST_IMAGE,)) -> None:
    """Skip (developer machine) or fail (CI) unless ``component`` is usable."""
    why = missing(component, images)
    if why is not None:
        _fail_or_skip(why)
