"""Docker and Podman runtimes: workers in ``docker run -i`` / ``podman run -i`` containers.

Two channels are used on purpose:

* the **CLI** (``docker run -i`` or ``podman run -i``) starts each worker, because the
  worker protocol is plain stdin/stdout lines: the CLI gives a child process whose pipes
  *are* the container's stdio, with the same framing and back-pressure as a host worker.
  The SDK's attach sockets would need a multiplexed-stream decoder and a reader thread per
  worker for the same result.
* the **SDK** (the ``docker`` Python package, also against Podman's Docker-compatible API)
  inspects images (identity, digest), pulls, and removes containers, where a structured
  answer and a typed ``NotFound`` are worth more than parsing CLI output.

Podman is reached through its API socket when one is configured (``base_url``, else
``$HITHER_PODMAN_SOCKET``, else ``$CONTAINER_HOST``): the worker then starts with
``podman --url <socket> run ...`` (or ``docker -H <socket> run ...`` when the podman CLI is
absent), so the service's own ``containers.conf`` applies. Without a socket the local
``podman`` CLI does everything (``podman image inspect``, ``podman rm``).

Image identity is resolved **once per process** per (engine, endpoint, image) and cached:
a long-lived process that rebuilds an image under the same tag must call
:func:`clear_identity_cache` to see the new digest. Images present locally are never
pulled; an absent one gets a single pull attempt (given up when the engine stays silent
for 30 s; through the podman CLI after ``$HITHER_PULL_TIMEOUT`` seconds, default 300).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import KW_ONLY, dataclass
from typing import Any

from ..errors import RuntimeUnavailableError
from .base import Mount, Runtime, WorkerSpec, kill_process_group

log = logging.getLogger("hither.runtimes")

ENGINES = ("docker", "podman")
WORKER_LABEL = "hither.worker"
OWNER_PID_LABEL = "hither.owner_pid"
OWNER_HOST_LABEL = "hither.owner_host"

# read timeout of SDK calls: a pull that stays silent this long is given up
_SDK_TIMEOUT = 30
_CLI_TIMEOUT = float(os.environ.get("HITHER_PULL_TIMEOUT", "300"))

_lock = threading.Lock()
_identities: dict[tuple[str, str, str], dict[str, Any]] = {}
_key_locks: dict[tuple[str, str, str], threading.Lock] = {}
_clients: dict[tuple[str, str], _Engine] = {}

# The image reference grammar of Docker and Podman (distribution/reference):
# [domain[:port]/]path-component[/path-component...][:tag][@algorithm:hex]
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*)"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")
_NAME_MAX = 255


def check_image_reference(image: str, shown: str | None = None) -> None:
    """Raise :class:`RuntimeUnavailableError` naming ``shown`` (default ``image``) unless
    ``image`` is a valid Docker/Podman image reference (``[registry/]name[:tag][@digest]``,
    lowercase name)."""
    m = _REFERENCE.fullmatch(image) if isinstance(image, str) else None
    if m is None or len(m.group("name")) > _NAME_MAX:
        raise RuntimeUnavailableError(
            f"invalid container image name {shown or image!r}: expected "
            "[REGISTRY[:PORT]/]NAME[:TAG][@DIGEST] with a lowercase NAME, e.g. "
            "'docker://python:3.12-slim' or 'docker://ghcr.io/org/image:1.0'")


def clear_identity_cache() -> None:
    """Forget every resolved image identity, so the next :meth:`DockerRuntime.identity`
    inspects the engine again (e.g. after ``docker build`` re-tagged an image)."""
    with _lock:
        _identities.clear()


@dataclass(frozen=True)
class DockerRuntime(Runtime):
    """Workers in a Docker or Podman container of ``image``.

    Args:
        image: a local or pullable image (``"local/x:tag"``); a ``docker://`` prefix is
            dropped.
        engine: ``"docker"`` or ``"podman"``.
        network: give the container a network (default: ``--network none``).
        gpus: expose all GPUs (``--gpus all``; Podman: CDI ``nvidia.com/gpu=all``).
        base_url: the engine's API endpoint (``unix:///...``); default: the engine's usual
            one (``DOCKER_HOST`` for Docker; ``HITHER_PODMAN_SOCKET``/``CONTAINER_HOST`` or
            the local CLI for Podman).
        extra_args: more ``run`` options, put just before the image.

    The worker runs as the caller's uid:gid (outputs belong to the caller), with a private
    ``/tmp`` tmpfs, ``HOME=/tmp``, no capabilities, and only the worker spec's mounts.
    """

    image: str
    _: KW_ONLY
    engine: str = "docker"
    network: bool = False
    gpus: bool = False
    base_url: str | None = None
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        image = self.image
        for prefix in ("docker://", "podman://"):
            if image.startswith(prefix):
                image = image[len(prefix):]
        check_image_reference(image, self.image)
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "extra_args", tuple(self.extra_args))

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The engine name (``"docker"`` or ``"podman"``)."""
        return self.engine

    def endpoint(self) -> str | None:
        """The API endpoint used (None: Docker's default, or Podman's local CLI)."""
        if self.base_url:
            return self.base_url
        if self.engine == "podman":
            return (os.environ.get("HITHER_PODMAN_SOCKET")
                    or os.environ.get("CONTAINER_HOST") or None)
        return None

    def pool_key(self) -> str:
        return json.dumps([self.engine, self.base_url, self.image, self.network, self.gpus,
                           list(self.extra_args)])

    def describe(self) -> str:
        return f"{self.engine} image {self.image}"

    def identity(self) -> dict[str, Any]:
        """``{"kind": engine, "image": image, "digest": "sha256:..."}``: the image's first
        repository digest if it came from a registry, else its image ID. Resolved once per
        process (see :func:`clear_identity_cache`)."""
        key = (self.engine, self.endpoint() or "", self.image)
        with _lock:
            found = _identities.get(key)
            if found is not None:
                return dict(found)
            klock = _key_locks.setdefault(key, threading.Lock())
        with klock:  # one resolution (and at most one pull) per key at a time
            with _lock:
                found = _identities.get(key)
            if found is None:
                found = {"kind": self.engine, "image": self.image,
                         "digest": _resolve_digest(self)}
                with _lock:
                    _identities[key] = found
        return dict(found)

    # ------------------------------------------------------------------ workers

    def worker_argv(self, spec: WorkerSpec, *, user: tuple[int, int] | None = None,
                    owner: tuple[int, str] | None = None,
                    cli: str | None = None) -> list[str]:
        """The command that starts a worker for ``spec`` (a pure function of its inputs).

        ``user`` (uid, gid) defaults to the caller's; ``owner`` (pid, hostname) to this
        process; ``cli`` is the executable (``docker``/``podman``), default the engine's.
        """
        uid, gid = user if user is not None else (os.getuid(), os.getgid())
        pid, host = owner if owner is not None else (os.getpid(), socket.gethostname())
        exe = cli or self.engine
        cli_is_podman = os.path.basename(exe) == "podman"
        argv = [exe]
        url = self.endpoint()
        if url:
            argv += ["--url", url] if cli_is_podman else ["-H", url]
        argv += ["run", "-i", "--rm", "--name", spec.name, "--pull=never",
                 "--label", f"{WORKER_LABEL}=1",
                 "--label", f"{OWNER_PID_LABEL}={pid}",
                 "--label", f"{OWNER_HOST_LABEL}={host}"]
        if self.engine == "docker":
            # tini as PID 1 reaps the zombies of a job's subprocesses; podman's
            # equivalent (catatonit) is an optional package, so it is not asked for there
            argv.append("--init")
        if not self.network:
            argv += ["--network", "none"]
        argv += ["--user", f"{uid}:{gid}",
                 "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                 # a private /tmp (some libraries write there); exec allowed for JIT caches
                 "--tmpfs", "/tmp:rw,exec,nosuid,nodev,mode=1777",
                 "-e", "HOME=/tmp", "-e", "USER=hither"]
        for k, v in spec.env.items():
            argv += ["-e", f"{k}={v}"]
        for m in spec.mounts:
            argv += ["-v", _volume(m)]
        argv += ["-w", _workdir(spec)]
        if self.gpus:
            argv += (["--device", "nvidia.com/gpu=all"] if self.engine == "podman"
                     else ["--gpus", "all"])
        argv += list(self.extra_args)
        argv += [self.image, self.python(), "-u", "/hither/worker/_worker.py", "--stdio"]
        return argv

    def start_worker(self, spec: WorkerSpec) -> subprocess.Popen:
        self.identity()  # the image must be present (or pulled once) before `run`
        argv = self.worker_argv(spec, cli=self._cli())
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)

    def stop_worker(self, proc: subprocess.Popen, spec: WorkerSpec) -> None:
        """Kill the CLI process, then remove the container by name (safe to repeat)."""
        was_running = kill_process_group(proc)
        try:
            engine = _engine(self.engine, self.endpoint())
            removed = engine.remove(spec.name)
            if was_running and not removed:
                # a `run` killed while its create request was in flight may still produce
                # the container a moment later
                time.sleep(0.5)
                engine.remove(spec.name)
        except RuntimeUnavailableError as e:
            log.warning("could not remove container %s: %s", spec.name, e)

    def _cli(self) -> str:
        if self.engine == "podman":
            exe = shutil.which("podman")
            if exe is None and self.endpoint():
                exe = shutil.which("docker")  # the docker CLI speaks to podman's socket too
            if exe is None:
                raise RuntimeUnavailableError(
                    "the podman CLI is not on PATH: install podman (e.g. `apt-get install "
                    "podman`); with HITHER_PODMAN_SOCKET set the docker CLI also works")
            return exe
        exe = shutil.which("docker")
        if exe is None:
            raise RuntimeUnavailableError(
                "the docker CLI is not on PATH (hither starts workers with `docker run -i`): "
                "install Docker (https://docs.docker.com/engine/install/)")
        return exe


def _workdir(spec: WorkerSpec) -> str:
    """``/hither/out`` when mounted (podman refuses a missing working directory)."""
    return "/hither/out" if any(m.target == "/hither/out" for m in spec.mounts) else "/tmp"


def _volume(m: Mount) -> str:
    for p in (m.host, m.target):
        if ":" in p or "," in p:
            raise ValueError(f"mount paths cannot contain ':' or ',' for docker/podman: {p!r}")
    return f"{m.host}:{m.target}:{'ro' if m.readonly else 'rw'}"


# ---------------------------------------------------------------------- engine access


class _Engine:
    """What hither asks of an engine besides `run`: images, removal, listing workers."""

    def image(self, image: str) -> dict[str, Any] | None:
        """The image's inspect data (``Id``, ``RepoDigests``), or None when absent."""
        raise NotImplementedError

    def pull(self, image: str) -> None:
        raise NotImplementedError

    def remove(self, name: str) -> bool:
        """Force-remove a container; False when there was none."""
        raise NotImplementedError

    def workers(self) -> list[dict[str, Any]]:
        """Worker containers: ``{"name", "labels", "created" (epoch seconds)}``."""
        raise NotImplementedError


class _SdkEngine(_Engine):
    def __init__(self, engine: str, url: str | None) -> None:
        try:
            import docker
            import docker.errors
        except ImportError as e:
            raise RuntimeUnavailableError(
                f"the `docker` Python package is needed to use {engine} images: "
                "pip install hither[docker]") from e
        self._errors = docker.errors
        try:
            if url:
                self.client = docker.DockerClient(base_url=url, timeout=_SDK_TIMEOUT)
            else:
                self.client = docker.from_env(timeout=_SDK_TIMEOUT)
            self.client.ping()
        except Exception as e:  # DockerException, requests errors, FileNotFoundError...
            raise RuntimeUnavailableError(_unreachable(engine, url, e)) from e
        self.engine = engine

    def image(self, image: str) -> dict[str, Any] | None:
        try:
            return self.client.images.get(image).attrs
        except self._errors.ImageNotFound:
            return None

    def pull(self, image: str) -> None:
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(image)
        self.client.images.pull(repo, tag=tag or "latest")

    def remove(self, name: str) -> bool:
        for attempt in range(5):
            try:
                container = self.client.containers.get(name)
                break
            except self._errors.NotFound:
                return False
            except self._errors.APIError:
                # podman answers 500 ("read /proc/N/cgroup: no such process") while the
                # container is exiting: ask again in a moment
                if attempt == 4:
                    raise
                time.sleep(0.2)
        # podman's forced removal first stops with SIGTERM and a 10 s grace period, which
        # a worker (PID 1) ignores; SIGKILL first makes removal immediate on both engines
        try:
            container.kill()
        except self._errors.APIError:
            pass  # not running any more
        try:
            container.remove(force=True)
        except self._errors.NotFound:
            pass  # `--rm` removed it meanwhile
        except self._errors.APIError as e:
            if "in progress" not in str(e):
                raise
            # `--rm` is already removing it: wait, so that "stopped" means "gone"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    self.client.containers.get(name)
                except self._errors.NotFound:
                    break
                time.sleep(0.05)
        return True

    def workers(self) -> list[dict[str, Any]]:
        out = []
        for c in self.client.containers.list(all=True, filters={"label": f"{WORKER_LABEL}=1"}):
            out.append({"name": c.name, "labels": dict(c.labels or {}),
                        "created": _parse_time(c.attrs.get("Created"))})
        return out


class _PodmanCliEngine(_Engine):
    def __init__(self) -> None:
        exe = shutil.which("podman")
        if exe is None:
            raise RuntimeUnavailableError(_unreachable("podman", None, "podman is not on PATH"))
        self.exe = exe

    def _run(self, *args: str, timeout: float = _SDK_TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run([self.exe, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def image(self, image: str) -> dict[str, Any] | None:
        r = self._run("image", "inspect", "--format", "json", image)
        if r.returncode != 0:
            if "not known" in r.stderr or "no such" in r.stderr.lower():
                return None
            raise RuntimeUnavailableError(_unreachable("podman", None, r.stderr.strip()))
        attrs = json.loads(r.stdout)[0]
        if not attrs["Id"].startswith("sha256:"):  # the CLI prints bare hex, the API not
            attrs["Id"] = "sha256:" + attrs["Id"]
        return attrs

    def pull(self, image: str) -> None:
        r = self._run("pull", "-q", image, timeout=_CLI_TIMEOUT)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip())

    def remove(self, name: str) -> bool:
        r = self._run("rm", "-f", "-t", "0", name)
        if r.returncode == 0:
            return True
        if "no such container" in r.stderr.lower():
            return False
        raise RuntimeUnavailableError(f"podman rm -f {name} failed: {r.stderr.strip()}")

    def workers(self) -> list[dict[str, Any]]:
        r = self._run("ps", "-a", "--filter", f"label={WORKER_LABEL}=1", "--format", "json")
        if r.returncode != 0:
            raise RuntimeUnavailableError(f"podman ps failed: {r.stderr.strip()}")
        return [{"name": c["Names"][0], "labels": c.get("Labels") or {},
                 "created": float(c.get("Created", 0))}
                for c in json.loads(r.stdout or "[]")]


def _engine(engine: str, url: str | None) -> _Engine:
    key = (engine, url or "")
    with _lock:
        found = _clients.get(key)
    if found is not None:
        return found
    client: _Engine
    if engine == "podman" and not url:
        client = _PodmanCliEngine()
    else:
        client = _SdkEngine(engine, url)
    with _lock:
        return _clients.setdefault(key, client)


def _unreachable(engine: str, url: str | None, err: object) -> str:
    if engine == "docker":
        where = url or os.environ.get("DOCKER_HOST") or "the default socket /var/run/docker.sock"
        return (f"the Docker engine is not reachable at {where} ({err}). Start it "
                "(`sudo systemctl start docker`, or run `dockerd`), install it "
                "(https://docs.docker.com/engine/install/), or point DOCKER_HOST / "
                "DockerRuntime(base_url=...) at a running engine")
    if url:
        return (f"the Podman API service is not reachable at {url} ({err}). Start it "
                f"(`podman system service --time=0 {url} &`, or `systemctl start "
                "podman.socket`), or unset HITHER_PODMAN_SOCKET/CONTAINER_HOST to use the "
                "podman CLI directly")
    return (f"Podman cannot be used ({err}): install it (e.g. `apt-get install podman`), "
            "or set HITHER_PODMAN_SOCKET to the socket of a `podman system service`")


def _resolve_digest(rt: DockerRuntime) -> str:
    url = rt.endpoint()
    engine = _engine(rt.engine, url)
    try:
        attrs = engine.image(rt.image)
    except RuntimeUnavailableError:
        raise
    except Exception as e:  # the engine refused the name (APIError 400/500), or broke
        raise RuntimeUnavailableError(
            f"{rt.engine} could not look up image {rt.image!r}: {e}") from e
    if attrs is None:
        try:
            engine.pull(rt.image)
            attrs = engine.image(rt.image)
            if attrs is None:
                raise RuntimeError("the pull succeeded but the image is still not listed")
        except Exception as e:
            cmd = rt.engine
            raise RuntimeUnavailableError(
                f"{rt.engine} image {rt.image} is not present locally and could not be pulled "
                f"(no registry reachable?): build or load it first (`{cmd} build -t "
                f"{rt.image} DIR`, `{cmd} load -i IMAGE.tar` or `{cmd} import ROOTFS.tar "
                f"{rt.image}`). Pull error: {e}") from e
    digests = sorted(d for d in attrs.get("RepoDigests") or [] if "@" in d)
    if digests:
        return digests[0].split("@", 1)[1]
    return str(attrs["Id"])


def _parse_time(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if not value:
        return 0.0
    text = str(value).replace("Z", "+00:00")
    if "." in text:  # engines give nanoseconds; fromisoformat takes at most microseconds
        head, rest = text.split(".", 1)
        frac = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(frac):]
        text = f"{head}.{frac[:6]}{tz}"
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_orphans(engine: str = "docker", *, older_than: float = 0.0,
                    base_url: str | None = None) -> list[str]:
    """Remove worker containers (label ``hither.worker=1``) whose creating process is gone.

    Only containers created on this host (label ``hither.owner_host``) and at least
    ``older_than`` seconds ago are considered; a container whose owner pid was reused by
    another process is kept. Returns the names removed. ``engine="apptainer"`` and
    ``"venv"`` have nothing to clean (their workers die with their process group).
    """
    if engine in ("apptainer", "venv", "host"):
        return []
    url = DockerRuntime("x", engine=engine, base_url=base_url).endpoint()
    eng = _engine(engine, url)
    host = socket.gethostname()
    now = time.time()
    removed = []
    for c in eng.workers():
        labels = c["labels"]
        if labels.get(OWNER_HOST_LABEL) != host:
            continue
        try:
            pid = int(labels.get(OWNER_PID_LABEL, ""))
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if now - c["created"] < older_than:
            continue
        if eng.remove(c["name"]):
            removed.append(c["name"])
    return removed
