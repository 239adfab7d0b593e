"""One writer per run directory: refusal, release, takeover of dead and stale owners, and a real second resume."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_train
from test_resilience import RUN, start_until

from reid.engine.run_lock import LOCK_FILE, RunDirLocked, acquire, hold_run_dir
from reid.errors import ConfigError

HOST = socket.gethostname()
FORK = multiprocessing.get_context("fork")


def write_lock(directory: Path, host: str, pid: int, age: float = 0.0, **slurm) -> Path:
    """A lock file as another process would have left it, last refreshed `age` seconds ago."""
    path = directory / LOCK_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "started": "2024-01-01T00:00:00+00:00", "token": "t",
                                **slurm}))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def owner_pid(directory: Path) -> int:
    return json.loads((directory / LOCK_FILE).read_text())["pid"]


def test_lock_is_reentrant_in_one_process_and_released_on_any_exit(tmp_path):
    run_dir = tmp_path / "run"
    with hold_run_dir(run_dir, 3600):
        record = json.loads((run_dir / LOCK_FILE).read_text())
        assert (record["host"], record["pid"]) == (HOST, os.getpid())
        with hold_run_dir(run_dir, 3600):  # a pipeline's stage, or train() under the run_dir resolver's claim
            pass
        assert owner_pid(run_dir) == os.getpid()
    assert not (run_dir / LOCK_FILE).exists()
    with pytest.raises(KeyError), hold_run_dir(run_dir, 3600):
        raise KeyError("a failing run")
    assert not (run_dir / LOCK_FILE).exists()


def test_a_live_owner_on_this_host_is_refused_and_its_lock_left_alone(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        path = write_lock(tmp_path, HOST, owner.pid, age=5)
        before = (path.read_bytes(), path.stat().st_mtime_ns)
        with pytest.raises(RunDirLocked) as refused:
            acquire(tmp_path, 3600)
        assert str(refused.value) == (
            f"{tmp_path} is in use by pid {owner.pid} on host {HOST} since 2024-01-01T00:00:00+00:00 "
            f"(lock file {path}); wait for it to finish, stop it, or, if that process is gone, delete the lock file")
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    finally:
        owner.communicate()


def test_a_foreign_host_is_honoured_until_its_heartbeat_is_stale(tmp_path, caplog):
    path = write_lock(tmp_path, "elsewhere", 4242, age=50)
    with pytest.raises(RunDirLocked, match=r"in use by pid 4242 on host elsewhere since .* Its heartbeat is 50 s old; "
                                           r"a lock from another host is taken over once older than "
                                           r"trainer.lock_stale_after=60 s"):
        acquire(tmp_path, 60)
    os.utime(path, (time.time() - 61, time.time() - 61))
    with caplog.at_level(logging.WARNING, logger="reid"), hold_run_dir(tmp_path, 60):
        assert owner_pid(tmp_path) == os.getpid()
    assert f"taking over the lock of {tmp_path}: pid 4242 on host elsewhere has not refreshed it for 61 s " \
           "(trainer.lock_stale_after=60)" in caplog.text
    assert not path.exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node_at_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    path = write_lock(tmp_path, "node7", 4242, age=5, slurm_task="777.0", slurm_restarts=1)
    with pytest.raises(RunDirLocked, match="in use by pid 4242 on host node7"):  # the same start: alive
        acquire(tmp_path, 3600)
    write_lock(tmp_path, "node7", 4242, age=5, slurm_task="778.0", slurm_restarts=0)
    with pytest.raises(RunDirLocked, match="in use by pid 4242 on host node7"):  # another job: alive
        acquire(tmp_path, 3600)
    write_lock(tmp_path, "node7", 4242, age=5, slurm_task="777.0", slurm_restarts=0)
    with caplog.at_level(logging.WARNING, logger="reid"), hold_run_dir(tmp_path, 3600):
        record = json.loads(path.read_text())
        assert (record["pid"], record["slurm_task"], record["slurm_restarts"]) == (os.getpid(), "777.0", 1)
    assert f"taking over the lock of {tmp_path}: it is this SLURM job's own (task 777.0, pid 4242 on node7) from " \
           "before its requeue (restart 0; this is restart 1)" in caplog.text


def test_the_heartbeat_keeps_a_live_owner_fresh(tmp_path):
    with hold_run_dir(tmp_path, 0.2):  # beats every 0.05 s
        path = tmp_path / LOCK_FILE
        os.utime(path, (0, 0))
        deadline = time.monotonic() + 30
        while path.stat().st_mtime < time.time() - 60:
            assert time.monotonic() < deadline, "the heartbeat never refreshed the lock"
            time.sleep(0.01)


def test_staleness_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.lock_stale_after=0: expected a number of seconds > 0"):
        acquire(tmp_path, 0)
    assert not (tmp_path / LOCK_FILE).exists()


def _hold_until_killed(directory: Path, ready) -> None:
    acquire(directory, 3600)
    ready.set()
    signal.pause()


def test_a_sigkilled_owners_lock_is_taken_over_with_a_log_line(tmp_path, caplog):
    ready = FORK.Event()
    owner = FORK.Process(target=_hold_until_killed, args=(tmp_path, ready))
    owner.start()
    assert ready.wait(60)
    with pytest.raises(RunDirLocked, match=f"in use by pid {owner.pid} on host {HOST}"):
        acquire(tmp_path, 3600)
    os.kill(owner.pid, signal.SIGKILL)
    owner.join(30)
    assert owner_pid(tmp_path) == owner.pid  # the dead owner's record is still there
    with caplog.at_level(logging.WARNING, logger="reid"), hold_run_dir(tmp_path, 3600):
        assert owner_pid(tmp_path) == os.getpid()
    assert f"taking over the lock of {tmp_path}: pid {owner.pid} on this host ({HOST}) has exited" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def _race_for(directory: Path, start, results, done) -> None:
    start.wait()
    try:
        acquire(directory, 3600)
    except RunDirLocked:
        results.put("refused")
        return
    results.put("won")
    done.wait(60)


def test_takers_of_a_dead_owners_lock_never_both_win(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path, HOST, int(dead.stdout))
    start, results, done = FORK.Barrier(4), FORK.Queue(), FORK.Event()
    takers = [FORK.Process(target=_race_for, args=(tmp_path, start, results, done)) for _ in range(4)]
    for taker in takers:
        taker.start()
    try:
        outcomes = sorted(results.get(timeout=60) for _ in takers)
        assert outcomes == ["refused", "refused", "refused", "won"]
        assert owner_pid(tmp_path) in {taker.pid for taker in takers}
    finally:
        done.set()
        for taker in takers:
            taker.join(30)


def snapshot(run_dir: Path) -> dict[str, tuple[str, int]]:
    """Every file of a run: content hash and modification time."""
    return {str(p.relative_to(run_dir)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def wait_stopped(pid: int) -> None:
    """Until the kernel reports the process stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.01)


@pytest.mark.multiprocess
def test_a_second_resume_of_a_running_run_refuses_and_touches_nothing(tmp_path, data_dir, compose_config):
    from reid.train import train

    run_dir = (tmp_path / "outputs" / "smoke" / "runs" / "interrupted").resolve()
    args = [arg for arg in RUN if not arg.startswith("trainer.max_epochs=")]
    train(compose_config(*args, "trainer.max_epochs=1"), run_dir=run_dir)  # in this process: one start less
    resume = [*args, "trainer.max_epochs=2", f"trainer.resume={run_dir}", "trainer.resume_allow_changes=true"]
    first = start_until(tmp_path, data_dir, resume, "epoch 2 step 1/4")
    try:
        first.send_signal(signal.SIGSTOP)  # frozen mid-training, so any change to its files is the second's
        wait_stopped(first.pid)
        before = snapshot(run_dir)
        assert LOCK_FILE in before and "log.txt" in before and ".hydra/config.yaml" in before

        second = run_train(resume, tmp_path, data_dir)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert (f"{run_dir} is in use by pid {first.pid} on host {HOST} since " in second.stderr
                and f"(lock file {run_dir / LOCK_FILE}); wait for it to finish, stop it, or, if that process is "
                    "gone, delete the lock file" in second.stderr), second.stderr[-3000:]
        assert snapshot(run_dir) == before
    finally:
        first.send_signal(signal.SIGCONT)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output[-3000:]

    assert [row.split(",")[0] for row in (run_dir / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]
    log_text = (run_dir / "log.txt").read_text()
    assert (log_text.count("run directory: "), log_text.count("[Epoch 2/2]")) == (1, 1)  # one process's log
    info = json.loads((run_dir / "model_info.json").read_text())
    assert info["status"] == "finished" and info["epochs_trained"] == 2 and len(info["resumes"]) == 1
    assert not (run_dir / LOCK_FILE).exists()
