"""The llama.cpp worker process (issue 19, item 1 and the LLM-worker part of the fault suite).

Real llama.cpp, the real stand-in GGUF, real signals: the worker is SIGKILLed between calls,
SIGSEGVed during a generation, SIGSTOPped (a hang), fed a file that is not a GGUF, killed
while loading, and has its model taken away before a restart. Each time the caller gets a
recorded tier error (the Decision carries the tier's ``on_error`` action), never an exception
out of ``Router.classify``, and a later call succeeds after the restart.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from safecascade.tiers.safeguard.backends import create_backend
from safecascade.tiers.safeguard.completion import BackendError
from safecascade.tiers.safeguard.llama_worker import read_frame, write_frame

POLICY = """# Violence

Decide whether the content asks for or gives help to physically hurt people.

## VIOLATES (1)
- **V1.a** Instructions for making weapons or explosives.

## SAFE (0)
- **V0.a** Everyday questions, cooking, history, fiction without instructions.
"""
# grammar off and no retry: llama.cpp's grammar sampler over gemma-3's 262k vocabulary costs ~1 s a token on a
# busy 2-core machine; these tests are about the process boundary, not the verdict.
WORKER = {"model_path": "stand-in", "n_ctx": 768, "n_threads": 2, "max_tokens": 12, "grammar": "off",
          "malformed_retries": 0, "worker_grace_s": 1.0,
          "worker_backoff_s": 0.2, "worker_backoff_max_s": 1.0, "worker_timeout_s": 120}
UNCERTAIN = "My neighbour's dog barks all night and I am furious with him."
LONG = "I walked along the river this morning and counted the boats, the ducks and the clouds. " * 12
ERROR_KINDS = ("crashed", "unavailable", "timeout")


# ------------------------------------------------------------------ fast checks (no model)
def test_frames_round_trip_and_a_stopped_reader_cannot_block_the_writer():
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        write_frame(w, ("complete", (1, "x"), {"k": None}), time.monotonic() + 1)
        assert read_frame(r, time.monotonic() + 1) == ("complete", (1, "x"), {"k": None})
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):  # nobody reads: a 1 MB frame does not fit the pipe
            write_frame(w, "x" * (1 << 20), time.monotonic() + 0.3)
        assert time.monotonic() - t0 < 2
    finally:
        os.close(r)
        os.close(w)


def test_read_deadline_and_eof():
    r, w = os.pipe()
    os.set_blocking(r, False)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        read_frame(r, time.monotonic() + 0.2)
    assert time.monotonic() - t0 < 2
    os.close(w)
    with pytest.raises(EOFError):
        read_frame(r, time.monotonic() + 1)
    os.close(r)


@pytest.mark.parametrize("value", ["no", "yes", False, True, None, "Process", 1])
def test_isolation_option_is_strict(value, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"options.isolation must be one of .process., .none."):
        create_backend({"backend": "llama_cpp", "model_path": str(gguf), "isolation": value}, tmp_path)


@pytest.mark.parametrize("key,value", [("worker_timeout_s", 0), ("worker_grace_s", -1), ("worker_backoff_s", True),
                                       ("worker_backoff_max_s", "30"), ("worker_load_timeout_s", None)])
def test_worker_options_are_checked(key, value, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=key):
        create_backend({"backend": "llama_cpp", "model_path": str(gguf), key: value}, tmp_path)


def test_tier_accepts_worker_options():
    from safecascade.router.policy import Policy
    from safecascade.tiers.safeguard import SafeguardTier

    class Stub:
        metadata: dict = {}

    t = SafeguardTier(name="sg", policies={"violence": Policy.from_text("violence", POLICY)}, backend=Stub(),
                      options={k: v for k, v in WORKER.items() if k.startswith("worker_")} | {"isolation": "process"})
    assert t.health()["state"] == "unknown"  # a backend without health(): not claimed up


# ------------------------------------------------------------------ real llama.cpp in a worker
pytest.importorskip("llama_cpp")


def _wait_up(backend, timeout: float = 90.0, *, not_pid: int | None = None) -> dict:
    """Wait for a live worker (with ``not_pid``: a restarted one; right after a kill the old one still reads as up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = backend.health()
        if h["state"] == "up" and h["alive"] and h["pid"] != not_pid:
            return h
        time.sleep(0.05)
    pytest.fail(f"the worker did not come back within {timeout}s: {backend.health()}")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _worker_pids() -> set[int]:
    """This process's llama.cpp worker children."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"llama_worker" in cmd:
            out.add(int(d.name))
    return out


def _small_generation(backend) -> None:
    """A short real generation (a later call succeeds after a restart) without the policy prompt's cold prefill."""
    from safecascade.tiers.safeguard.prompt import render_chat

    prompt = render_chat("Answer with one word.", "Say hello.", architecture="gemma3",
                         extra_tokens=backend.control_tokens)
    comp = backend.complete(prompt, max_tokens=4)
    assert comp.prompt_tokens > 5 and comp.completion_tokens >= 1 and comp.tokens


def _router(tmp: Path, opts: dict, on_error: str = "block"):
    import yaml

    from safecascade.router.cascade import Router
    from safecascade.hashing import text_hash

    (tmp / "violence.md").write_text(POLICY)
    rows = "".join(f"{text_hash(t)},0.5\n" for t in (UNCERTAIN, LONG))
    (tmp / "replay.csv").write_text("text_hash,violence\n" + rows)
    cfg = {"name": "worker-test", "policies": {"violence": "violence.md"},
           "tiers": [{"name": "replay", "type": "replay", "options": {"path": "replay.csv", "missing": "error"},
                      "bands": {"default": [0.2, 0.8]}},
                     {"name": "safeguard", "type": "safeguard", "options": opts, "on_error": on_error}]}
    (tmp / "router.yaml").write_text(yaml.safe_dump(cfg))
    return Router.load(tmp / "router.yaml")


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    r = _router(tmp_path_factory.mktemp("worker_router"), WORKER)
    yield r
    r.close()


def _backend(router):
    return router.tiers[-1].backend


def _assert_fallback(d, kinds=ERROR_KINDS) -> str:
    """The Decision carries the safeguard's recorded error and the on_error action (block)."""
    assert [t.tier for t in d.path] == ["replay", "safeguard"]
    sg = d.path[-1]
    assert sg.outcome == "error" and sg.error.split(":")[0] in kinds, sg.error
    assert sg.info["error_kind"] == sg.error.split(":")[0]
    assert d.action == "block" and d.reason == "fallback:block" and "safeguard_error" in d.warnings
    return sg.error


def _assert_judged(d) -> None:
    sg = d.path[-1]
    assert sg.error is None or sg.error.startswith("malformed"), sg.error  # the stand-in may ramble; never a crash
    if sg.error is None:
        assert d.reason == "last_tier" and 0.0 <= d.policies["violence"].score <= 1.0


@pytest.mark.slow
def test_real_generation_in_the_worker_on_this_cpu(router):
    """A real generation through the worker on whatever CPU runs the tests (Intel AMX here: extra buffer types off)."""
    b = _backend(router)
    assert b.describe()["isolation"] == "process" and b.n_ctx == 768 and b.metadata["general.architecture"] == "gemma3"
    h = b.health()
    assert h["state"] == "up" and h["alive"] and h["pid"] != os.getpid()
    d = router.classify(UNCERTAIN)
    sg = d.path[-1]
    assert sg.info["isolation"] == "process" and sg.cost["prompt_tokens"] > 100 and sg.cost["completion_tokens"] > 3
    _assert_judged(d)  # a verdict, or the stand-in's unparseable answer recorded as such: a generation either way
    if sg.error is None:
        assert sg.info["verdicts"]["violence"]["probability_source"] == "logprobs" and d.tier == "safeguard"
    _small_generation(b)
    health = router.health()
    assert health["status"] == "ok" and health["tiers"]["safeguard"]["pid"] == h["pid"]
    assert list(health["tiers"]) == ["safeguard"]  # the replay tier has no worker to report


@pytest.mark.slow
def test_worker_killed_between_calls(router):
    b = _backend(router)
    before = _wait_up(b)
    os.kill(before["pid"], signal.SIGKILL)  # what the OOM killer does
    time.sleep(0.05)
    d = router.classify(UNCERTAIN)  # never raises
    err = _assert_fallback(d, ("crashed", "unavailable"))
    assert "SIGKILL" in err or "restarting" in err
    h = b.health()
    assert "SIGKILL" in h["last_error"] and h["consecutive_failures"] >= 1
    assert router.health()["status"] in ("degraded", "ok")  # ok only if the restart already finished
    after = _wait_up(b, not_pid=before["pid"])
    assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"] + 1
    _assert_judged(router.classify(UNCERTAIN))
    assert b.health()["consecutive_failures"] == 0  # a good generation resets the backoff


@pytest.mark.slow
def test_worker_segfault_during_a_generation(router):
    b = _backend(router)
    pid = _wait_up(b)["pid"]
    idle = _cpu_ticks(pid)
    box: dict = {}
    th = threading.Thread(target=lambda: box.update(d=router.classify(LONG)))
    th.start()
    deadline = time.monotonic() + 30
    while _cpu_ticks(pid) - idle < 5 and time.monotonic() < deadline:  # >= 50 ms of llama.cpp work: generating
        time.sleep(0.01)
    os.kill(pid, signal.SIGSEGV)  # what the AMX matmul bug does
    th.join(60)
    assert not th.is_alive()
    err = _assert_fallback(box["d"], ("crashed",))
    assert "SIGSEGV" in err and "during complete" in err
    _wait_up(b, not_pid=pid)
    _small_generation(b)


@pytest.mark.slow
def test_hung_worker_times_out_then_recovers(router):
    b = _backend(router)
    tier = router.tiers[-1]
    h = _wait_up(b)
    b.count_tokens(UNCERTAIN)  # cached in the parent: the hang meets the generation, not a tokeniser call
    os.kill(h["pid"], signal.SIGSTOP)  # a hang: alive, never answers
    before = tier.options
    tier.options = dataclasses.replace(before, call_timeout_s=2.0)
    try:
        t0 = time.monotonic()
        d = router.classify(UNCERTAIN)
        took = time.monotonic() - t0
    finally:
        tier.options = before
    err = _assert_fallback(d, ("timeout",))
    assert "did not answer complete within 3s" in err
    assert 2.5 <= took < 8, took  # call_timeout_s 2 + worker_grace_s 1, then killed
    t0 = time.monotonic()  # while it restarts, calls fail fast instead of queueing
    d2 = router.classify(UNCERTAIN)
    assert time.monotonic() - t0 < 1.0
    _assert_fallback(d2, ("unavailable",))
    assert _wait_up(b, not_pid=h["pid"])["pid"] != h["pid"]
    _small_generation(b)


@pytest.mark.slow
def test_concurrent_callers_through_a_crash(router):
    """Four threads tokenising while the worker is SIGKILLed: each call answers or raises BackendError
    (crashed / unavailable), nobody deadlocks, and all succeed again after the restart."""
    b = _backend(router)
    pid = _wait_up(b)["pid"]
    stop = threading.Event()
    seen: dict[str, int] = {}
    other: list[BaseException] = []
    lock = threading.Lock()

    def hammer(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                b.count_tokens(f"thread {k} call {i} counts these words")
                key = "ok"
            except BackendError as exc:
                key = exc.kind
            except BaseException as exc:  # noqa: BLE001 - must not happen
                other.append(exc)
                return
            with lock:
                seen[key] = seen.get(key, 0) + 1

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    _wait_up(b, not_pid=pid)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads) and not other, other
    assert seen.get("ok", 0) > 10 and set(seen) <= {"ok", "crashed", "unavailable"}, seen
    assert seen.get("unavailable", 0) + seen.get("crashed", 0) >= 1, seen
    assert b.count_tokens("after the storm") >= 3


@pytest.mark.slow
def test_restart_that_cannot_load_is_down_with_backoff(tmp_path):
    from safecascade.tiers.safeguard.stand_in import stand_in_path

    link = tmp_path / "model.gguf"
    link.symlink_to(stand_in_path())
    b = create_backend({**WORKER, "model_path": str(link), "n_ctx": 512}, tmp_path)
    try:
        pid = b.health()["pid"]
        link.unlink()  # the model vanishes: every restart fails to load
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while b.health()["consecutive_failures"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        h = b.health()
        assert h["state"] in ("down", "restarting") and h["consecutive_failures"] >= 3 and h["restarts"] == 0
        assert "model.gguf" in h["last_error"] and not h["alive"]
        t0 = time.monotonic()
        with pytest.raises(BackendError) as exc:
            b.count_tokens("is it up?")
        assert exc.value.kind == "unavailable" and time.monotonic() - t0 < 0.5
        link.symlink_to(stand_in_path())  # back: the next attempt (<= worker_backoff_max_s) loads it
        assert _wait_up(b, 30)["restarts"] == 1
        assert b.count_tokens("is it up?") > 2
    finally:
        b.close()
    assert b.health()["state"] == "down"
    with pytest.raises(BackendError, match="closed"):
        b.count_tokens("closed")


@pytest.mark.slow
def test_bad_gguf_fails_at_load_naming_the_path(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64 + b"not a model")
    with pytest.raises(ValueError, match=r"junk\.gguf"):
        create_backend({**WORKER, "model_path": str(junk)}, tmp_path)
    with pytest.raises(ValueError, match=r"missing\.gguf"):
        create_backend({**WORKER, "model_path": str(tmp_path / "missing.gguf")}, tmp_path)


@pytest.mark.slow
def test_worker_dying_while_loading_is_a_load_error_naming_the_path(tmp_path):
    from safecascade.tiers.safeguard.stand_in import stand_in_path

    model = tmp_path / "dies.gguf"
    model.symlink_to(stand_in_path())
    box: dict = {}

    def load():
        try:
            box["b"] = create_backend({**WORKER, "model_path": str(model)}, tmp_path)
        except Exception as exc:  # noqa: BLE001 - the assertion is below
            box["exc"] = exc

    before = _worker_pids()  # other tests' workers (the module router's) are not ours to kill
    th = threading.Thread(target=load)
    th.start()
    killed = None
    deadline = time.monotonic() + 20
    while killed is None and time.monotonic() < deadline and th.is_alive():
        for pid in _worker_pids() - before:
            os.kill(pid, signal.SIGKILL)
            killed = pid
            break
        time.sleep(0.002)
    th.join(60)
    if "b" in box:  # the load beat the kill (a very fast machine): nothing to assert about
        box["b"].close()
        pytest.skip("the worker finished loading before it could be killed")
    assert killed is not None
    msg = str(box["exc"])
    assert isinstance(box["exc"], ValueError) and "dies.gguf" in msg and "SIGKILL" in msg and "loading" in msg


@pytest.mark.slow
def test_load_deadline(tmp_path):
    from safecascade.tiers.safeguard.stand_in import stand_in_path

    with pytest.raises(ValueError, match=r"gemma.*did not load the model within 0\.01s"):
        create_backend({**WORKER, "model_path": str(stand_in_path()), "worker_load_timeout_s": 0.01}, tmp_path)


@pytest.mark.slow
def test_isolation_none_still_runs_in_process(tmp_path):
    b = create_backend({**{k: v for k, v in WORKER.items() if not k.startswith("worker_")}, "isolation": "none",
                        "n_ctx": 512}, tmp_path)
    try:
        assert b.describe().get("isolation") is None and b.health()["pid"] == os.getpid()
        assert b.count_tokens("hello world") >= 2
    finally:
        b.close()
    assert b.health()["state"] == "down"


@pytest.mark.slow
def test_a_forked_copy_does_not_share_the_pipes(router):
    """gunicorn --preload style: a fork of the process that built the Router must not write to its worker."""
    b = _backend(router)
    _wait_up(b)
    long_text = "x " * 9000  # over the count cache's size limit: straight to the request path, no lock taken
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked copy
        try:
            b.count_tokens(long_text)
        except BackendError as exc:
            os._exit(0 if exc.kind == "unavailable" and "another process" in str(exc) else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
        os._exit(3)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b.count_tokens(long_text) > 1000  # the parent's worker is untouched
