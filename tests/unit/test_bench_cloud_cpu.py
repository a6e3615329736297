"""bench.cloud_cpu's accounting: per-thread CPU over a window, labelled, and its report."""

from __future__ import annotations

import pytest

from bench.cloud_cpu import ThreadCpu, label_threads, report

pytestmark = pytest.mark.unit


def test_threads_are_labelled_ranked_and_counted_over_the_window_only():
    before = {10: ("python", 1.0), 11: ("python", 5.0), 12: ("python", 2.0), 13: ("event_engine", 0.1),
              14: ("event_engine", 0.2), 15: ("python", 0.5)}
    after = {10: ("python", 1.5), 11: ("python", 9.0), 12: ("python", 6.5), 13: ("event_engine", 0.3),
             14: ("event_engine", 0.3), 15: ("python", 0.5), 16: ("python", 0.25)}  # 16 started meanwhile
    rows = label_threads(10, before, after)
    assert rows == [
        ThreadCpu("main thread (event loop, gRPC callbacks)", 0.5),
        ThreadCpu("Python thread #1 (compute worker?)", 4.5),
        ThreadCpu("Python thread #2 (compute worker?)", 4.0),
        ThreadCpu("Python thread #3 (other: gRPC's aio poller, ...)", 0.25),
        ThreadCpu("event_engine (gRPC C-core)", pytest.approx(0.3)),
    ]  # thread 15 used nothing in the window and is left out
    renamed = {tid: ("python3", s) if name == "python" else (name, s) for tid, (name, s) in after.items()}
    assert [r.label for r in label_threads(10, before, renamed)] == [r.label for r in rows]  # another name


def test_report_gives_shares_of_a_core_and_cpu_per_request(tmp_path):
    result = {"concurrency": 32, "wall": 10.0, "answered": 2000, "errors": 0, "mean_batch": 8.0, "p50_ms": 100.0,
              "threads": [ThreadCpu("main thread (event loop, gRPC callbacks)", 1.0),
                          ThreadCpu("Python thread #1 (compute worker?)", 8.0)],
              "cores": 2, "client": 0.5, "machine_busy": 18.0, "machine_idle": 2.0, "steal": 0.0}
    text = report(result, tmp_path / "split.md")
    assert (tmp_path / "split.md").read_text() == text
    assert "| main thread (event loop, gRPC callbacks) | 10.0% | 0.500 |" in text
    assert "| **server, all threads** | 90.0% | 4.500 |" in text
    assert "| benchmark client (its process) | 5.0% | 0.250 |" in text
    assert "200.0 answers/s" in text and "hypervisor" not in text and "2 CPU cores" in text


def test_proc_readers_see_this_process_and_its_cpus():
    import os
    import threading

    from bench.cloud_cpu import cpu_times, thread_times

    spin = threading.Thread(target=lambda: sum(range(3_000_000)), name="spin")
    spin.start()
    spin.join()
    threads = thread_times(os.getpid())
    assert os.getpid() in threads and threads[os.getpid()][1] > 0.0
    times = cpu_times(os.sched_getaffinity(0))
    assert times["busy"] > 0.0 and times["idle"] >= 0.0
