"""DaskJobHandler on real dask clusters: the CLI-started one of .ci/setup-dask.sh (scheduler
file in HITHER_TEST_DASK_SCHEDULER_FILE) and a LocalCluster of this process.

What the contract (hither.testing, tests/handlers/test_dask_contract.py) does not cover:
values through the store, a dask worker killed mid-job (a crash, never run again), cancel
and timeout stopping the job's own process on the dask worker, nothing left behind, the
handler's own LocalCluster, dask resources for containers.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import urllib.error
import urllib.request

import pytest

import hither as hi
from hither.errors import UnreadableResultError
from hither.handlers import _dask_jobs as J
from hither.handlers import _dask_wire as WIRE
from hither.handlers import _dask_worker as W
from hither.launch import Outcome
from hither.testing.checks import wait_until
from tests.components import require

from .daskjobs import dj_add, dj_count_then_sleep, dj_pid, dj_raise, dj_size

WAIT = 60


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def lines(path) -> list[str]:
    try:
        with open(path) as f:
            return [x.strip() for x in f if x.strip()]
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------- clusters
@pytest.fixture(scope="module")
def cli_client():
    """A client of the cluster started with the dask CLI (.ci/setup-dask.sh)."""
    require("dask")
    from distributed import Client

    client = Client(scheduler_file=os.environ["HITHER_TEST_DASK_SCHEDULER_FILE"],
                    set_as_default=False, timeout=30)
    client.wait_for_workers(2, timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def local_client():
    """A LocalCluster of this process: 2 worker processes of one thread, loopback."""
    pytest.importorskip("distributed") if os.environ.get("CI") != "true" else None
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(params=["cli", "local"])
def client(request):
    return request.getfixturevalue(f"{request.param}_client")


@pytest.fixture
def store(tmp_path):
    return hi.JobCache(path=str(tmp_path / "store"))


@pytest.fixture
def jh(client):
    h = hi.DaskJobHandler(client)
    yield h
    h.shutdown(wait=False, cancel=True)


def dask_worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def host_worker_pids(jh) -> set[int]:
    return {p for ps in jh.worker_pids.values() for p in ps}


# ---------------------------------------------------------------------------- basics
def test_results_errors_and_a_pipeline(jh, store):
    with hi.Config(job_handler=jh, job_cache=store):
        a = dj_add.run(x=1, y=2)
        b = dj_add.run(x=a, y=10)
        bad = dj_raise.run(message="nope")
    assert b.result(timeout=WAIT) == 13
    err = bad.exception(timeout=WAIT)
    assert type(err) is KeyError and err.args == ("nope",)
    info = b.get_runtime_info()
    assert info["console_out"] is not None
    # a cache hit never reaches dask
    with hi.Config(job_handler=jh, job_cache=store):
        again = dj_add.run(x=1, y=2)
    assert again.result(timeout=WAIT) == 3 and again.cache_hit


def test_only_misses_are_submitted_each_with_its_own_key(jh, store, monkeypatch):
    """A hit never reaches dask; each miss is one task, pure=False, a key of its own, no
    dask retries."""
    calls: list[dict] = []  # one per task (the handler submits them in batches)
    real = jh.client.map

    def spy(*args, **kwargs):
        calls.extend({**kwargs, "key": k} for k in kwargs["key"])
        return real(*args, **kwargs)

    monkeypatch.setattr(jh.client, "map", spy)
    with hi.Config(job_handler=jh, job_cache=store):
        assert dj_add.run(x=1, y=2).result(timeout=WAIT) == 3
        assert dj_add.run(x=1, y=2).result(timeout=WAIT) == 3  # a hit
        assert dj_add.run(x=1, y=3).result(timeout=WAIT) == 4
    with hi.Config(job_handler=jh):  # no cache: the same job twice is two tasks
        assert [j.result(timeout=WAIT) for j in [dj_add.run(x=5), dj_add.run(x=5)]] == [5, 5]
    assert len(calls) == 4, calls
    assert all(c["pure"] is False and c["retries"] == 0 for c in calls)
    keys = [c["key"] for c in calls]
    assert len(set(keys)) == 4 and all(k.startswith("hither-dj_add-") for k in keys)


def test_replies_come_with_events_and_the_scheduler_forgets_them(jh, monkeypatch):
    """Each job is settled from the reply its "done" event brought (nothing is fetched
    from dask, whose futures are only released); the scheduler's log of the handler's
    events is trimmed as they come, not kept whole."""
    from hither.handlers import _dask_client
    from hither.handlers import dask as dask_module

    monkeypatch.setattr(dask_module, "_TRIM_EVERY", 4)
    fetched: list[str] = []
    real = _dask_client.results

    def spy(client, tasks):
        fetched.extend(t.key for t in tasks)
        return real(client, tasks)

    monkeypatch.setattr(_dask_client, "results", spy)
    with hi.Config(job_handler=jh):
        assert [j.result(timeout=WAIT) for j in [dj_add.run(x=i) for i in range(12)]] == \
            list(range(12))
    assert wait_until(lambda: not jh._by_key, WAIT)  # every dask future released
    assert fetched == []
    assert wait_until(lambda: len(jh.client.get_events(jh.name)) < 8, WAIT), \
        len(jh.client.get_events(jh.name))


def test_values_travel_through_the_store(jh, store):
    """Arguments and results over inline_limit go through the transfer folder in the job
    cache's store, not with the task; the folder is left empty."""
    tmp = str(store.store.tmp_dir)
    data = os.urandom(200_000)
    with hi.Config(job_handler=jh, job_cache=store):
        job = dj_size.run(data=data, store_tmp=tmp, out=300_000)
    n, seen, out = job.result(timeout=WAIT)
    assert n == len(data) and out == b"x" * 300_000
    assert any(k == "in" and s >= len(data) for k, s in seen), seen
    assert any(k == "claim" for k, _ in seen), seen
    xfer = [d for d in os.listdir(tmp) if d.startswith("dask-")]
    assert len(xfer) == 1
    assert wait_until(lambda: not [x for x in os.listdir(os.path.join(tmp, xfer[0]))
                                   if not x.startswith("fn-")]), \
        os.listdir(os.path.join(tmp, xfer[0]))


def test_small_values_travel_with_the_task_and_large_replies_are_spilled(tmp_path):
    """The worker side: a reply over the limit is written to <key>.out; a small answer
    (or the note of a spilled one) also goes with the task's "done" event."""

    import asyncio

    def spec(limit: int) -> WIRE.Spec:
        return WIRE.Spec(key=f"hither-x-{limit:032d}", job_id="j", label="x", fid="f",
                         xfer=str(tmp_path), inline_limit=limit)

    plugin = W.HitherPlugin("p", "0", "t", str(tmp_path), [])
    worker = _FakeDaskWorker()
    plugin.setup(worker)
    try:
        small = WIRE.HostReply(True, b"x" * 10, [], 0.0, 1.0, 1, "w")
        big = WIRE.HostReply(True, b"x" * 5000, [], 0.0, 1.0, 1, "w")
        # the task's own result is None: the answer went with the event
        assert asyncio.run(plugin._answer(spec(1000), small)) is None
        assert asyncio.run(plugin._answer(spec(1000), big)) is None
        # over EVENT_LIMIT (the scheduler keeps events) but under inline_limit: spilled too
        assert asyncio.run(plugin._answer(spec(10 * W.EVENT_LIMIT), big)) is None
        assert [m[0] for _t, m in worker.events] == ["done"] * 3
        answers = [pickle.loads(m[2]) for _t, m in worker.events]
        assert answers[0] == small
        for spilled, limit in zip(answers[1:], (1000, 10 * W.EVENT_LIMIT), strict=True):
            assert spilled == WIRE.Spilled(spec(limit).key + ".out")
            assert os.path.getsize(tmp_path / spilled.name) > 5000
        # no event could be sent: the answer is the task's result
        worker.log_event = None
        assert asyncio.run(plugin._answer(spec(1000), small)) is small
    finally:
        plugin.close()


def test_warm_host_workers_are_reused_per_dask_worker(jh):
    with hi.Config(job_handler=jh):
        one_by_one = [dj_pid.run(i=i).result(timeout=WAIT) for i in range(6)]
        burst = [dj_pid.run(i=100 + i) for i in range(10)]
        burst_pids = {j.result(timeout=WAIT) for j in burst}
    assert len(set(one_by_one)) == 1, one_by_one
    assert len(burst_pids) <= 2 and set(one_by_one) <= burst_pids | set(one_by_one)
    assert set(one_by_one) | burst_pids <= host_worker_pids(jh) | set(one_by_one)


# ---------------------------------------------------------------------------- stopping jobs
def test_cancel_stops_the_running_job_and_the_handler_goes_on(jh, tmp_path):
    path = tmp_path / "runs.txt"
    with hi.Config(job_handler=jh):
        job = dj_count_then_sleep.run(path=str(path), seconds=60, after="finished")
    assert wait_until(lambda: len(lines(path)) == 1, WAIT)
    assert job.get_status() is hi.JobStatus.RUNNING
    pid = int(lines(path)[0])
    assert job.cancel() is True
    with pytest.raises(hi.JobCancelledException):
        job.result(timeout=WAIT)
    assert wait_until(lambda: not pid_alive(pid), WAIT), "the job's process still runs"
    with hi.Config(job_handler=jh):
        assert dj_add.run(x=2, y=2).result(timeout=WAIT) == 4
    assert lines(path) == [str(pid)]


def test_cancel_a_queued_job_means_it_never_runs(jh, tmp_path):
    blockers = tmp_path / "blockers.txt"
    queued = tmp_path / "queued.txt"
    with hi.Config(job_handler=jh):
        busy = [dj_count_then_sleep.run(path=str(blockers), seconds=2, after=str(i))
                for i in range(2)]
        late = dj_count_then_sleep.run(path=str(queued), seconds=0)
    assert late.cancel() is True
    assert late.get_status() is hi.JobStatus.CANCELLED
    for b in busy:
        b.result(timeout=WAIT)
    hi.wait()
    time.sleep(0.5)  # a withdrawn task that started anyway would have written by now
    assert lines(queued) == []


def test_jobs_cancelled_at_once_never_run(jh, tmp_path):
    """dask reports a cancelled task at once, but its worker may still start it: the job's
    claim must stay so that the task finds it and does not run the function."""
    path = tmp_path / "runs.txt"
    for _ in range(4):
        with hi.Config(job_handler=jh):
            job = dj_count_then_sleep.run(path=str(path), seconds=30)
        assert job.cancel() is True
    with hi.Config(job_handler=jh):
        assert dj_add.run(x=1, y=1).result(timeout=WAIT) == 2
    time.sleep(1)
    assert lines(path) == []


def test_job_timeout_stops_the_job_and_counts_from_its_start(jh, tmp_path):
    path = tmp_path / "runs.txt"
    with hi.Config(job_handler=jh, job_timeout=1):
        job = dj_count_then_sleep.run(path=str(path), seconds=60, after="finished")
        fast = dj_add.run(x=1, y=1)
    with pytest.raises(hi.JobTimeoutError, match="job_timeout"):
        job.result(timeout=WAIT)
    assert fast.result(timeout=WAIT) == 2
    pid = int(lines(path)[0])
    assert wait_until(lambda: not pid_alive(pid), WAIT)
    assert "finished" not in lines(path)
    info = job.get_runtime_info()
    assert info["start_time"] is not None


def test_a_dask_worker_dying_mid_job_is_a_crash_and_the_job_never_runs_again(client, tmp_path):
    """Whatever the scheduler's allowed-failures, the task dask re-runs elsewhere finds the
    job's claim and does not run it: one line in the count file."""
    path = tmp_path / "runs.txt"
    store = hi.JobCache(path=str(tmp_path / "store"))
    with hi.DaskJobHandler(client) as jh, hi.Config(job_handler=jh, job_cache=store):
        job = dj_count_then_sleep.run(path=str(path), seconds=60, after="finished")
        assert wait_until(lambda: len(lines(path)) == 1, WAIT)
        host_pid = int(lines(path)[0])
        before = dask_worker_pids(client)
        where = next(a for a, pids in jh.worker_pids.items() if host_pid in pids)
        os.kill(before[where], signal.SIGKILL)
        with pytest.raises(hi.WorkerCrashedError, match="died") as info:
            job.result(timeout=WAIT)
        assert "second time" in str(info.value) or "died" in str(info.value)
        assert wait_until(lambda: not pid_alive(host_pid), WAIT), \
            "the job's process outlived its dask worker"
        client.wait_for_workers(2, timeout=WAIT)  # the nanny restarted it
        assert dj_add.run(x=1, y=2).result(timeout=WAIT) == 3
        time.sleep(1)
        assert lines(path) == [str(host_pid)]
        # the crash was not cached: the same job runs again
        again = dj_count_then_sleep.run(path=str(path), seconds=60, after="finished")
        assert wait_until(lambda: len(lines(path)) == 2, WAIT)
        assert not again.cache_hit
        again.cancel()
    assert lines(path)[0] == str(host_pid) and len(lines(path)) == 2


def test_no_worker_process_is_left_after_shutdown(client):
    jh = hi.DaskJobHandler(client)
    with hi.Config(job_handler=jh):
        jobs = [dj_pid.run(i=i) for i in range(6)]
        pids = {j.result(timeout=WAIT) for j in jobs}
    assert pids and all(pid_alive(p) for p in pids)
    jh.shutdown()
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), WAIT), \
        [p for p in pids if pid_alive(p)]
    with hi.Config(job_handler=jh):
        closed = dj_add.run(x=1)
    with pytest.raises(hi.HandlerClosedError):
        closed.result(timeout=WAIT)


def test_reset_cancels_and_stops_warm_workers(client, tmp_path):
    with hi.DaskJobHandler(client) as jh:
        with hi.Config(job_handler=jh):
            warm = dj_pid.run().result(timeout=WAIT)
            job = dj_count_then_sleep.run(path=str(tmp_path / "r.txt"), seconds=60)
        assert wait_until(lambda: job.get_status() is hi.JobStatus.RUNNING, WAIT)
        hi.reset()
        assert job.get_status() is hi.JobStatus.CANCELLED
        assert wait_until(lambda: not pid_alive(warm), WAIT)
        with hi.Config(job_handler=jh):
            assert dj_add.run(x=5).result(timeout=WAIT) == 5


# ---------------------------------------------------------------------------- own cluster
def test_without_arguments_it_owns_a_local_cluster_on_loopback():
    pytest.importorskip("distributed") if os.environ.get("CI") != "true" else None
    jh = hi.DaskJobHandler(n_workers=1)
    try:
        cluster = jh._cluster
        assert cluster is not None
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        http = cluster.scheduler.http_server  # health checks only: no dashboard pages
        assert http.address == "127.0.0.1"
        with pytest.raises(urllib.error.HTTPError) as no_page:
            urllib.request.urlopen(f"http://127.0.0.1:{http.port}/status", timeout=10)
        assert no_page.value.code == 404
        with hi.Config(job_handler=jh):
            pid = dj_pid.run().result(timeout=WAIT)
        workers = list(dask_worker_pids(jh.client).values())
        assert len(workers) == 1
    finally:
        jh.shutdown()
    assert wait_until(lambda: not any(pid_alive(p) for p in [pid, *workers]), WAIT)
    assert cluster.status.name == "closed"


def test_missing_dask_gives_install_advice(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"hither\[dask\]"):
        hi.DaskJobHandler()


def test_dask_is_imported_only_when_a_handler_is_made():
    import subprocess

    code = ("import sys, hither as hi; cls = hi.DaskJobHandler; "
            "assert 'distributed' not in sys.modules, 'imported with hither'; "
            "assert 'hither.handlers._dask_worker' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_one_connection_argument_at_most():
    with pytest.raises(ValueError, match="at most one"):
        hi.DaskJobHandler(address="tcp://127.0.0.1:1", scheduler_file="x.json")


# ---------------------------------------------------------------------------- containers
def worker_containers(dask_pids) -> list[str]:
    """Names of hither worker containers started by the given dask worker processes."""
    import subprocess

    r = subprocess.run(["docker", "ps", "-a", "--filter", "label=hither.worker=1", "--format",
                        '{{.Label "hither.owner_pid"}} {{.Names}}'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pids = {str(p) for p in dask_pids}
    return [line.split()[1] for line in r.stdout.splitlines()
            if line.split() and line.split()[0] in pids]


@pytest.fixture
def docker_image():
    from tests.components import TEST_IMAGE

    require("docker")
    return "docker://" + TEST_IMAGE


def test_container_workers_stay_warm_per_dask_worker_and_go_at_shutdown(cli_client,
                                                                         docker_image):
    dask_pids = dask_worker_pids(cli_client).values()
    assert worker_containers(dask_pids) == []
    jh = hi.DaskJobHandler(cli_client)
    with hi.Config(job_handler=jh, container=docker_image):
        first = [dj_pid.run(i=i).result(timeout=WAIT) for i in range(4)]
        burst = [dj_add.run(x=i, y=1) for i in range(6)]
        assert [j.result(timeout=WAIT) for j in burst] == list(range(1, 7))
    assert len(set(first)) == 1
    assert 1 <= len(worker_containers(dask_pids)) <= 2
    jh.shutdown()
    assert wait_until(lambda: worker_containers(dask_pids) == [], WAIT), \
        worker_containers(dask_pids)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_stopped_container_job_removes_its_container(cli_client, docker_image, tmp_path,
                                                       how):
    dask_pids = dask_worker_pids(cli_client).values()
    with hi.DaskJobHandler(cli_client) as jh:
        with hi.Config(job_handler=jh, container=docker_image,
                       job_timeout=2 if how == "timeout" else None):
            job = dj_count_then_sleep.run(path="/tmp/runs.txt", seconds=60)
        if how == "cancel":
            assert wait_until(lambda: job.get_status() is hi.JobStatus.RUNNING, WAIT)
            assert wait_until(lambda: worker_containers(dask_pids) != [], WAIT)
            assert job.cancel() is True
            with pytest.raises(hi.JobCancelledException):
                job.result(timeout=WAIT)
        else:
            with pytest.raises(hi.JobTimeoutError):
                job.result(timeout=WAIT)
        assert wait_until(lambda: worker_containers(dask_pids) == [], WAIT), \
            worker_containers(dask_pids)
        with hi.Config(job_handler=jh, container=docker_image):
            assert dj_add.run(x=1, y=1).result(timeout=WAIT) == 2


def test_a_container_job_of_a_killed_dask_worker_leaves_no_container(cli_client,
                                                                    docker_image):
    before = dask_worker_pids(cli_client)
    with hi.DaskJobHandler(cli_client) as jh, \
            hi.Config(job_handler=jh, container=docker_image):
        job = dj_count_then_sleep.run(path="/tmp/runs.txt", seconds=60)
        assert wait_until(lambda: job.get_status() is hi.JobStatus.RUNNING, WAIT)
        assert wait_until(lambda: worker_containers(before.values()) != [], WAIT)
        owner = next(p for p in before.values() if worker_containers([p]))
        os.kill(owner, signal.SIGKILL)
        with pytest.raises(hi.WorkerCrashedError):
            job.result(timeout=WAIT)
        assert wait_until(lambda: worker_containers([owner]) == [], WAIT), \
            worker_containers([owner])
        cli_client.wait_for_workers(2, timeout=WAIT)


def _scheduler_keys(dask_scheduler=None) -> list[str]:
    """The keys the dask scheduler knows (run on the scheduler)."""
    return [str(k) for k in dask_scheduler.tasks]


def test_worker_processes_and_containers_go_with_their_dask_worker(docker_image):
    """A dask worker that closes (retired, scaled down) takes its warm host worker and its
    container worker with it."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster, set_as_default=False) as client, \
            hi.DaskJobHandler(client) as jh:
        (address, dask_pid), = dask_worker_pids(client).items()
        with hi.Config(job_handler=jh):
            host_pid = dj_pid.run().result(timeout=WAIT)
        with hi.Config(job_handler=jh, container=docker_image):
            assert dj_add.run(x=1, y=1).result(timeout=WAIT) == 2
        assert pid_alive(host_pid) and len(worker_containers([dask_pid])) == 1
        # the handler lets go of the dask futures of settled jobs shortly after (a worker
        # holding a result only a client wants cannot be retired)
        assert wait_until(lambda: not jh._by_key, WAIT)
        # and the scheduler has heard it: the client's release travels on another stream
        # than the retire request, and a worker holding a wanted result is not retired
        assert wait_until(lambda: not client.run_on_scheduler(_scheduler_keys), WAIT)
        client.retire_workers([address], close_workers=True)
        assert wait_until(lambda: not pid_alive(host_pid), WAIT)
        assert wait_until(lambda: worker_containers([dask_pid]) == [], WAIT), \
            worker_containers([dask_pid])


def test_container_resources_limit_how_many_containers_run_at_once(docker_image):
    """One dask worker with 2 threads offering containers=1: two container jobs run one
    after the other, while a host job runs beside them."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None, resources={"containers": 1},
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster, set_as_default=False) as client, \
            hi.DaskJobHandler(client, container_resources={"containers": 1}) as jh:
        with hi.Config(job_handler=jh, container=docker_image):
            jobs = [dj_count_then_sleep.run(path="/tmp/r.txt", seconds=1.5) for _ in range(2)]
        for j in jobs:
            j.result(timeout=WAIT)
        (s1, e1), (s2, e2) = sorted((j.get_runtime_info()["start_time"],
                                     j.get_runtime_info()["end_time"]) for j in jobs)
        assert e1 <= s2, "two container jobs ran at once on a worker offering one"


# ---------------------------------------------------------------------------- the plugin alone
class _FakeDaskWorker:
    """Stands in for a dask worker around the plugin (the worker processes are real); its
    ``answers`` are the replies that came with "done" events."""

    address = "tcp://127.0.0.1:1"

    class state:  # noqa: N801 - the attribute dask's Worker has
        nthreads = 1

    def __init__(self) -> None:
        self.events: list = []

    def log_event(self, topic, msg) -> None:
        self.events.append((topic, msg))

    @property
    def answers(self) -> list:
        return [pickle.loads(m[2]) for _t, m in self.events if m[0] == "done"]


def _host_spec(tmp_path, fn, **kwargs) -> WIRE.Spec:
    import uuid

    from hither.handlers.host import by_value_sources

    fid = uuid.uuid4().hex
    (tmp_path / f"fn-{fid}").write_bytes(pickle.dumps((pickle.dumps(fn), by_value_sources(fn))))
    return WIRE.Spec(key=f"hither-{fn.__name__}-{uuid.uuid4().hex}", job_id="j", label="x",
                  fid=fid, xfer=str(tmp_path), kwargs=pickle.dumps(kwargs))


def test_idle_worker_processes_are_stopped_after_a_while(tmp_path, monkeypatch):
    """A client that died without shutting down leaves no process running for long."""
    monkeypatch.setattr(W, "IDLE_TIMEOUT", 0.4)
    plugin = W.HitherPlugin("p", hi.__version__, "t", os.getcwd(), sys.path)
    worker = _FakeDaskWorker()
    plugin.setup(worker)
    try:
        assert plugin.run(_host_spec(tmp_path, dj_pid, i=1)) is None
        [reply] = worker.answers
        assert isinstance(reply, WIRE.HostReply) and reply.ok, reply
        kinds = [m[0] for _t, m in worker.events]
        assert kinds[-1] == "done" and kinds.count("done") == 1, kinds
        assert plugin.pids() == [reply.pid] and pid_alive(reply.pid)
        assert wait_until(lambda: not pid_alive(reply.pid), 10)
        assert plugin.pids() == []
    finally:
        plugin.close()


def test_a_claimed_job_is_not_run_again(tmp_path):
    """The task dask runs again after its worker died finds the claim: a crash, not a run."""
    plugin = W.HitherPlugin("p", hi.__version__, "t", os.getcwd(), sys.path)
    plugin.setup(_FakeDaskWorker())
    try:
        spec = _host_spec(tmp_path, dj_pid)
        assert WIRE.claim(WIRE.claim_path(spec.xfer, spec.key), "run tcp://10.0.0.9:4 123\n")
        out = plugin.run(spec)
        assert isinstance(out, Outcome)
        assert isinstance(out.error, hi.WorkerCrashedError), out
        assert "tcp://10.0.0.9:4 (pid 123)" in str(out.error)
        assert plugin.pids() == []  # no worker process was even started
        cancelled = _host_spec(tmp_path, dj_pid)
        assert WIRE.claim(WIRE.claim_path(cancelled.xfer, cancelled.key), "cancel\n")
        assert isinstance(plugin.run(cancelled).error, hi.JobCancelledException)
    finally:
        plugin.close()


def test_a_job_says_it_started_only_once_it_ran_a_while(tmp_path):
    """Tiny jobs answer with one event; a job running longer than ANNOUNCE_AFTER says it
    started first (its process is listed by then: a cancel can find it)."""
    plugin = W.HitherPlugin("p", hi.__version__, "t", os.getcwd(), sys.path)
    worker = _FakeDaskWorker()
    plugin.setup(worker)
    try:
        spec = _host_spec(tmp_path, dj_count_then_sleep, path=str(tmp_path / "n"),
                          seconds=J.ANNOUNCE_AFTER * 4)
        assert plugin.run(spec) is None
        [reply] = worker.answers
        assert isinstance(reply, WIRE.HostReply) and reply.ok, reply
        kinds = [m[0] for _t, m in worker.events]
        assert kinds == ["started", "done"]
        assert worker.events[0][1][1] == spec.key
    finally:
        plugin.close()


def test_an_unreadable_or_lost_answer_fails_its_job_only(jh):
    """An answer that came with an event and cannot be read is an UnreadableResultError
    for that job, never an exception; so is a task that finished with no answer (its event
    was sent but never came)."""
    from types import SimpleNamespace

    from hither.handlers import _dask_client as D

    task = D.Task.__new__(D.Task)
    task.launch = SimpleNamespace(label="x")
    status, error = D.FromEvent(b"\x80\x05not a pickle").load("x")
    assert status == "error" and isinstance(error, UnreadableResultError)
    assert isinstance(D.task_outcome(task, status, error).error, UnreadableResultError)
    assert D.FromEvent(pickle.dumps(Outcome(True))).load("x")[0] == "finished"

    class _Finished:  # a finished dask future whose task returned None
        status = "finished"

        def result(self, timeout=None):
            return None

    task.key, task.dask = "hither-x-" + "1" * 32, _Finished()
    [(found, status, result)] = D.results(None, [task])
    assert (found, status, result) == (task, "finished", None)
    lost = D.task_outcome(task, status, result)
    assert isinstance(lost.error, UnreadableResultError) and "never reached" in str(lost.error)


def test_a_host_job_running_when_the_plugin_closes_ends_at_once(tmp_path):
    """The plugin closing (its handler shut down, its dask worker closing) stops a running
    host job, and the task waiting for it ends: it must not hold its dask worker's slot."""
    import threading

    plugin = W.HitherPlugin("p", hi.__version__, "t", os.getcwd(), sys.path)
    worker = _FakeDaskWorker()
    plugin.setup(worker)
    spec = _host_spec(tmp_path, dj_count_then_sleep, path=str(tmp_path / "n"), seconds=60)
    done = threading.Event()

    def run() -> None:
        plugin.run(spec)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert wait_until(lambda: lines(tmp_path / "n"), WAIT)  # the function runs
    pid = int(lines(tmp_path / "n")[0])
    plugin.close()
    assert done.wait(10), "the task still waits for a job whose plugin closed"
    [answer] = worker.answers
    assert isinstance(answer.error, hi.JobCancelledException), answer
    assert "closed" in str(answer.error)
    assert wait_until(lambda: not pid_alive(pid), WAIT)
