"""Which real components (container engines, apptainer, uv, Slurm, Dask, S3, a web server,
test users, Chromium) this machine offers to tests.

``require(component)`` skips a test when the component is missing on a developer machine,
but fails it in CI (``CI=true``): a green CI run that skipped Docker would prove nothing.
Each check uses the component for real (with short timeouts), as the `.ci/setup-*.sh`
scripts leave it; their variables come from ``.ci/env.sh``.
"""

from __future__ import annotations

import concurrent.futures
import grp
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from functools import cache

import pytest

TEST_IMAGE = os.environ.get("HITHER_TEST_IMAGE", "local/py3numpy:bookworm")

#: every component name ``missing``/``require`` accept
COMPONENTS = ("docker", "podman", "podman-cli", "apptainer", "apptainer-sif", "uv",
              "jupyter-kernel", "slurm", "sacct", "dask", "s3", "http-store", "users", "chromium")


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
    if component in _SERVICE_CHECKS:
        return _SERVICE_CHECKS[component]()
    raise ValueError(f"unknown component {component!r}")


def require(component: str, images: tuple[str, ...] = (TEST_IMAGE,)) -> None:
    """Skip (developer machine) or fail (CI) unless ``component`` is usable."""
    why = missing(component, images)
    if why is not None:
        _fail_or_skip(why)


def _run(argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess[str] | str:
    """Run ``argv``; the completed process, or why it could not run."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{argv[0]}: {e}"


def _slurm() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm (sinfo; started by .ci/setup-slurm.sh)"
    if not os.environ.get("SLURM_CONF") and not os.path.isfile("/etc/slurm/slurm.conf"):
        return "a Slurm configuration (SLURM_CONF, written by .ci/setup-slurm.sh)"
    r = _run(["sinfo", "-h", "-o", "%T"])
    if isinstance(r, str) or r.returncode != 0:
        return f"a Slurm controller that answers ({r if isinstance(r, str) else r.stderr.strip()})"
    states = r.stdout.split()
    if not {"idle", "mixed", "allocated", "completing"} & set(states):
        return f"a Slurm node that takes jobs (sinfo states: {' '.join(states) or 'none'})"
    return None


def _sacct() -> str | None:
    why = missing("slurm")
    if why is not None:
        return why
    r = _run(["sacct", "-X", "-n", "-P", "-S", "now", "--format=JobID"])
    if isinstance(r, str) or r.returncode != 0:
        return ("Slurm accounting through slurmdbd, for sacct "
                f"({r if isinstance(r, str) else r.stderr.strip()})")
    return None


def _dask() -> str | None:
    sf = os.environ.get("HITHER_TEST_DASK_SCHEDULER_FILE")
    if not sf or not os.path.isfile(sf):
        return "a dask scheduler file (HITHER_TEST_DASK_SCHEDULER_FILE, by .ci/setup-dask.sh)"
    try:
        from distributed import Client
    except ImportError:
        return "the dask distributed package"
    try:
        with Client(scheduler_file=sf, timeout=5, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=10)
    except Exception as e:
        return f"the dask scheduler in {sf} with 2 workers ({type(e).__name__}: {e})"
    return None


def _s3() -> str | None:
    endpoint = os.environ.get("HITHER_TEST_S3_ENDPOINT")
    if not endpoint:
        return "an S3 endpoint (HITHER_TEST_S3_ENDPOINT, moto started by .ci/setup-s3.sh)"
    for module in ("boto3", "s3fs"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package"
    try:
        with urllib.request.urlopen(endpoint.rstrip("/") + "/", timeout=5) as response:
            body = response.read()
    except OSError as e:
        return f"an S3 endpoint that answers at {endpoint} ({e})"
    if b"ListAllMyBucketsResult" not in body:
        return f"an S3 endpoint at {endpoint} (its answer is not an S3 bucket list)"
    return None


def _http_store() -> str | None:
    root, url = os.environ.get("HITHER_TEST_HTTP_ROOT"), os.environ.get("HITHER_TEST_HTTP_URL")
    if not root or not url or not os.path.isdir(root):
        return ("a web server and its folder (HITHER_TEST_HTTP_URL, HITHER_TEST_HTTP_ROOT, "
                "by .ci/setup-http.sh)")
    try:
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-", delete=False) as f:
            f.write(b"0123456789")
        os.chmod(f.name, 0o644)
    except OSError as e:
        return f"a writable HITHER_TEST_HTTP_ROOT ({e})"
    try:
        request = urllib.request.Request(f"{url.rstrip('/')}/{os.path.basename(f.name)}",
                                         headers={"Range": "bytes=2-4"})
        with urllib.request.urlopen(request, timeout=5) as response:
            status, body = response.status, response.read()
    except OSError as e:
        return f"a web server at {url} that serves {root} ({e})"
    finally:
        os.unlink(f.name)
    if (status, body) != (206, b"234"):
        return f"a web server at {url} that honours Range requests (got {status}, {body[:20]!r})"
    return None


def _users() -> str | None:
    users = os.environ.get("HITHER_TEST_USERS", "").split()
    group = os.environ.get("HITHER_TEST_GROUP")
    if len(users) < 2 or not group:
        return ("two test users and their group (HITHER_TEST_USERS, HITHER_TEST_GROUP, "
                "by .ci/setup-users.sh)")
    if os.geteuid() != 0:
        return "root, to run code as the test users"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux)"
    try:
        uids = {pwd.getpwnam(u).pw_uid for u in users}
        grp.getgrnam(group)
    except KeyError as e:
        return f"the test users and group ({e.args[0]})"
    if len(uids) != len(users):
        return f"test users {users} with distinct uids"
    code = "import grp, os; print(*[grp.getgrgid(g).gr_name for g in os.getgroups()])"
    for user in users:
        r = _run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                  sys.executable, "-c", code], timeout=30)
        if isinstance(r, str) or r.returncode != 0:
            return (f"user {user} able to run {sys.executable} "
                    f"({r if isinstance(r, str) else r.stderr.strip()[-300:]})")
        if group not in r.stdout.split():
            return f"user {user} in group {group} (groups: {r.stdout.strip()})"
    return None


def _chromium() -> str | None:
    exe = os.environ.get("HITHER_TEST_CHROMIUM") or shutil.which("chromium")
    if not exe or not os.access(exe, os.X_OK):
        return "Chromium (HITHER_TEST_CHROMIUM, by .ci/setup-browser.sh)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "the playwright package"

    def render() -> str | None:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True, timeout=30_000)
            try:
                page = browser.new_page()
                page.set_content("<p id='x'>hither</p>")
                return page.text_content("#x", timeout=10_000)
            finally:
                browser.close()

    # The sync API refuses to run inside an event loop: give it a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            text = pool.submit(render).result(timeout=60)
        except Exception as e:
            first_line = (str(e).splitlines() or [""])[0]
            return f"Chromium {exe} driven by playwright ({type(e).__name__}: {first_line})"
    if text != "hither":
        return f"Chromium {exe} that renders a page (got {text!r})"
    return None


_SERVICE_CHECKS: dict[str, Callable[[], str | None]] = {
    "slurm": _slurm,
    "sacct": _sacct,
    "dask": _dask,
    "s3": _s3,
    "http-store": _http_store,
    "users": _users,
    "chromium": _chromium,
}
