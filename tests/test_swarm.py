"""Runs on a cluster (SPEC §7): a real Swarm of three real Docker engines, each in a
network namespace of its own (tests/swarm_lab.py), placing runs by their presets.
The lifecycle suite runs on it too (tests/test_engine.py, executor `swarm`)."""

import time

import pytest
import yaml

from runs.engine import reconcile_runs
from runs.executors import executor_for
from runs.models import Run
from runs.services import create_run, terminate_run
from tests.conftest import Api, wait_for, wait_until
from tests.test_engine import log_texts, statuses, wait_for_log
from tests.test_swarm_lab import node_ids, node_state

FINAL = {"completed", "failed", "terminated"}


def on_lab(user, *commands: str, preset: str = "cpu-1", **extra) -> Run:
    body = {"name": "swarm-test", "image": "runyard/busybox:latest", "resources": {"cluster": "lab", "preset": preset},
            "run": [{"command": c} for c in commands], **extra}
    return create_run(user=user, source=yaml.safe_dump(body))



def occupy_the_manager(user) -> Run:
    """A run holding all of n1 (the manager), so that the next cpu-2 run lands on a worker."""
    fillers = []
    while not any(f.node == "n1" for f in fillers):
        fillers.append(wait_for(on_lab(user, "sleep 300", preset="cpu-2").pk, "running"))
    end_all(user, [f for f in fillers if f.node != "n1"])
    return next(f for f in fillers if f.node == "n1")


def end_all(user, runs):
    for run in runs:
        run.refresh_from_db()
        if run.status not in FINAL:
            terminate_run(run, actor=user)
    for run in runs:
        wait_for(run.pk, FINAL, removed=True)


def test_runs_wait_for_room_spread_over_nodes_and_start_when_room_frees(alice, lab_cluster):
    # Each lab node has two CPUs: cpu-2 fills one. Five runs on three nodes.
    runs = [on_lab(alice, "echo on $(hostname); sleep 300", preset="cpu-2") for _ in range(5)]
    try:
        wait_until(lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status="running").count() == 3, what="three runs running")
        running = list(Run.objects.filter(pk__in=[r.pk for r in runs], status="running"))
        assert sorted(run.node for run in running) == ["n1", "n2", "n3"]
        waiting = sorted(Run.objects.filter(pk__in=[r.pk for r in runs], status="pending"), key=lambda r: r.pk)
        assert len(waiting) == 2
        api = Api(alice)
        wait_until(lambda: "insufficient resources on 3 nodes" in Run.objects.get(pk=waiting[0].pk).status_reason,
                   what="the Swarm's reason shown")
        shown = api.get(f"/runs/{waiting[0].pk}").json()
        assert shown["status"] == "pending" and shown["queue_position"] == 1 and shown["node"] is None
        assert shown["status_reason"].startswith("waiting: ") and shown["cluster"] == "lab"
        assert api.get(f"/runs/{waiting[1].pk}").json()["queue_position"] == 2
        assert api.get(f"/runs/{running[0].pk}").json()["node"] == running[0].node

        # A terminated pending run never starts, even when room frees after.
        assert api.post(f"/runs/{waiting[1].pk}/terminate").status_code == 202
        wait_for(waiting[1].pk, "terminated", removed=True)
        # Room frees: the first in the queue starts at once, on the node that freed.
        terminate_run(running[0], actor=alice)
        started = wait_for(waiting[0].pk, "running", timeout=15)
        assert started.node == running[0].node
        assert statuses(started)[:3] == ["pending", "initializing", "running"]
        time.sleep(2)  # the Swarm had its chance to start the terminated one
        never = Run.objects.get(pk=waiting[1].pk)
        assert never.started_at is None and statuses(never) == ["pending", "terminated"]
        assert not executor_for(never).exists(never)
    finally:
        end_all(alice, runs)


def test_a_gpu_run_gets_one_of_a_nodes_gpus_and_one_too_many_waits(alice, lab_cluster):
    # n3 advertises two (fake) GPUs as the Swarm generic resource `gpu`: no real GPU here.
    runs = [on_lab(alice, 'echo "gpu=$DOCKER_RESOURCE_GPU"; sleep 300', preset="gpu-1") for _ in range(3)]
    try:
        wait_until(lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status="running").count() == 2, what="two GPU runs")
        running = list(Run.objects.filter(pk__in=[r.pk for r in runs], status="running"))
        assert {run.node for run in running} == {"n3"}
        gpus = set()
        for run in running:
            wait_until(lambda: any(t.startswith("gpu=GPU-fake-") for t in log_texts(run)), what="the GPU in the log")
            gpus |= {t for t in log_texts(run) if t.startswith("gpu=")}
        assert gpus == {"gpu=GPU-fake-0", "gpu=GPU-fake-1"}  # one each, not the same one
        third = Run.objects.get(pk__in=[r.pk for r in runs], status="pending")
        wait_until(lambda: "insufficient resources" in Run.objects.get(pk=third.pk).status_reason, what="the third waits")
    finally:
        end_all(alice, runs)


def test_a_missing_image_fails_at_initializing_naming_the_registry_reference(alice, lab_cluster):
    body = {"name": "no-image", "image": "runyard/not-in-the-registry:1", "resources": {"cluster": "lab"},
            "run": [{"command": "true"}]}
    run = create_run(user=alice, source=yaml.safe_dump(body))
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "failed"
    assert "image not found" in run.status_reason
    assert f"{lab_cluster.registry}/runyard/not-in-the-registry:1" in run.status_reason
    assert statuses(run) == ["pending", "initializing", "failed"]


def test_exports_reports_and_limits_on_a_node(alice, lab_cluster, swarm_lab):
    run = on_lab(
        alice,
        "echo '#runyard step=1 loss=0.5 progress=0.5'; echo '#runyard step=2 loss=0.25 progress=1'",
        "mkdir -p /output && echo result > /output/result.txt",
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        "ls /sys/class/net",
        "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -s '\t' ' '",
        export={"/output/": "volume://outputs"},
    )
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.node in swarm_lab.nodes and run.image_digest.startswith(f"{lab_cluster.registry}/runyard/busybox@sha256:")
    api = Api(alice)
    assert b"".join(api.get(f"/runs/{run.pk}/files/raw", path="/output/result.txt").streaming_content) == b"result\n"
    assert run.exports_state == "complete"
    assert api.get(f"/runs/{run.pk}/metrics/loss").json()["y"] == [0.5, 0.25]
    assert run.progress == 1
    quota, interfaces, capabilities, no_new_privileges = log_texts(run)
    assert quota.split()[0] == "100000"  # one CPU: cpu-1's limit, per 100 ms period
    assert interfaces == "lo"  # no network route out: only loopback
    assert capabilities == "CapEff: 0000000000000000" and no_new_privileges == "NoNewPrivs: 1"


def test_a_shell_and_an_attach_on_a_worker_node(alice, lab_cluster):
    runs = [occupy_the_manager(alice)]
    try:
        runs.append(on_lab(alice, "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.5; done", preset="cpu-2"))
        run = wait_for(runs[-1].pk, "running")
        assert run.node in ("n2", "n3")
        executor = executor_for(run)
        shell = executor.open_terminal(run, "shell", 80, 24)
        try:
            shell.write(b"echo inside-$((6*7)) on $(hostname)\n")
            seen = b""
            deadline = time.monotonic() + 20
            while b"inside-42" not in seen and time.monotonic() < deadline:
                seen += shell.read()
            assert b"inside-42" in seen
        finally:
            shell.close()
        attach = executor.open_terminal(run, "attach", 80, 24)
        try:
            seen, deadline = b"", time.monotonic() + 20
            while b"tick" not in seen and time.monotonic() < deadline:
                seen += attach.read()
            assert b"tick" in seen
        finally:
            attach.close()
    finally:
        end_all(alice, runs)


def test_a_run_on_a_node_whose_engine_dies_fails_naming_the_node_and_keeps_its_log(alice, lab_cluster, swarm_lab):
    runs = [on_lab(alice, "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.2; done", preset="cpu-2") for _ in range(3)]
    victim_node = None
    try:
        wait_until(lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status="running").count() == 3, what="three running")
        victim = Run.objects.get(pk__in=[r.pk for r in runs], node="n2")
        victim_node = victim.node
        wait_for_log(victim, "line 3")
        swarm_lab.kill_engine(victim_node)
        # Within two reconcile periods (2 s in the tests' worker), plus the time to notice.
        victim = wait_for(victim.pk, FINAL, timeout=30)
        assert victim.status == "failed"
        assert "n2" in victim.status_reason and "lost" in victim.status_reason
        assert "line 1" in log_texts(victim) and "line 3" in log_texts(victim)
        others = Run.objects.filter(pk__in=[r.pk for r in runs]).exclude(pk=victim.pk)
        assert {run.status for run in others} == {"running"}
    finally:
        if victim_node:
            swarm_lab.start_engine(victim_node)
        end_all(alice, runs)


def test_a_run_on_a_node_whose_engine_restarts_fails_naming_the_node(alice, lab_cluster, swarm_lab):
    runs = [occupy_the_manager(alice)]
    try:
        runs.append(on_lab(alice, "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.2; done", preset="cpu-2"))
        run = wait_for(runs[-1].pk, "running")
        wait_for_log(run, "line 3")
        swarm_lab.kill_engine(run.node)
        swarm_lab.start_engine(run.node)  # at once: a restart, not a loss
        run = wait_for(run.pk, FINAL, timeout=60)
        assert run.status == "failed"
        assert run.node in run.status_reason, run.status_reason
        assert "line 3" in log_texts(run)
    finally:
        end_all(alice, runs)


def test_a_run_on_a_node_the_manager_loses_fails_naming_the_node(alice, lab_cluster, swarm_lab):
    runs = [occupy_the_manager(alice)]
    node = None
    try:
        runs.append(on_lab(alice, "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.2; done", preset="cpu-2"))
        run = wait_for(runs[-1].pk, "running")
        node = run.node
        wait_for_log(run, "line 3")
        swarm_lab.cut_link(node)  # its engine still answers the console; the manager hears nothing
        run = wait_for(run.pk, FINAL, timeout=60)  # the manager's heartbeat gives up after about 10 s
        assert run.status == "failed"
        assert run.status_reason == f"node {node} lost: the swarm manager reports it down"
        assert "line 3" in log_texts(run)
    finally:
        if node:
            swarm_lab.cut_link(node, up=True)
            node_id = node_ids(swarm_lab)[node]
            wait_until(lambda: node_state(swarm_lab, node_id) == "ready", what=f"{node} back", timeout=60)
        end_all(alice, runs)


def test_a_bad_cluster_setting_is_refused_naming_the_field(engine):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="needs --manager"):
        call_command("register_cluster", "nowhere", "--swarm", stdout=open("/dev/null", "w"))
    with pytest.raises(CommandError, match="manager: 'docker.example.org' is not a Docker endpoint"):
        call_command("register_cluster", "nowhere", "--swarm", "--manager", "docker.example.org",
                     stdout=open("/dev/null", "w"))
    with pytest.raises(CommandError, match="node_engines: not a Docker endpoint"):
        call_command("register_cluster", "odd", "--swarm", "--manager", "tcp://m:2376", "--node", "n1=http://x",
                     stdout=open("/dev/null", "w"))
    with pytest.raises(CommandError, match="registry"):
        call_command("register_cluster", "odd", "--swarm", "--manager", "tcp://m:2376", "--registry", "https://r/x",
                     stdout=open("/dev/null", "w"))


def test_100000_lines_from_a_worker_node_are_stored_once_and_numbered(alice, lab_cluster):
    filler = occupy_the_manager(alice)
    try:
        big = on_lab(alice, "seq 1 100000", preset="cpu-2")
        big = wait_for(big.pk, FINAL, timeout=180, removed=True)
        assert big.status == "completed", big.status_reason
        assert big.node in ("n2", "n3")
        assert big.log_lines == 100000
        from runs import logstore

        lines, after = [], 0
        while True:
            page = logstore.read_lines(big, after=after, limit=10000)
            lines += page["lines"]
            if not page["lines"]:
                break
            after = page["next"]
        assert [line["n"] for line in lines] == list(range(1, 100001))
        assert [line["text"] for line in lines] == [str(i) for i in range(1, 100001)]
    finally:
        end_all(alice, [filler])


def test_the_reconciler_removes_services_of_no_live_run(alice, lab_cluster):
    run = on_lab(alice, "sleep 300")
    wait_for(run.pk, "running")
    executor = executor_for(run)
    assert executor.exists(run)
    Run.objects.filter(pk=run.pk).delete()  # as if its row were gone: the service belongs to nothing
    reconcile_runs()
    wait_until(lambda: run.pk not in executor.live_run_ids(), what="the orphaned service removed", timeout=30)


@pytest.mark.parametrize("resources, loc", [
    ({"cluster": "mars"}, "resources.cluster"),
    ({"cluster": "lab", "preset": "tiny"}, "resources.preset"),
    ({"cluster": "default", "preset": "cpu-2"}, "resources.preset"),
])
def test_a_cluster_or_preset_that_does_not_fit_is_a_400_naming_the_field(api, resources, loc, lab_cluster):
    from runs.clusters import get_cluster
    from runs.models import ResourcePreset

    ResourcePreset.objects.get(name="tiny").clusters.add(get_cluster("default"))  # tiny: offered by default only
    body = {"name": "x", "image": "runyard/busybox:latest", "resources": resources, "run": [{"command": "true"}]}
    response = api.post("/runs", yaml.safe_dump(body))
    assert response.status_code == 400, response.content
    assert loc in [e["loc"] for e in response.json()["errors"]]


def test_the_list_shows_live_why_a_run_waits_and_when_it_starts(browser, alice, lab_cluster):
    from playwright.sync_api import expect

    runs = [on_lab(alice, "sleep 300", preset="cpu-2") for _ in range(3)]
    try:
        for run in runs:
            wait_for(run.pk, "running")
        browser.goto("/")
        waiting = on_lab(alice, "echo finally", "sleep 300", preset="cpu-2")
        runs.append(waiting)
        row = browser.page.locator(f"#run-{waiting.pk}")
        # Neither the reason nor the place in the queue needs a reload.
        expect(row).to_contain_text("insufficient resources on 3 nodes")
        expect(row).to_contain_text("#1 in the team's queue")
        browser.screenshot("swarm-list-waiting")
        terminate_run(runs[0], actor=alice)
        expect(row.locator(".badge")).to_have_text("Running", timeout=30000)
        expect(row).not_to_contain_text("waiting")
    finally:
        end_all(alice, runs)


def test_a_team_at_its_cap_hands_nothing_more_to_the_cluster(alice, lab_cluster):
    from runs.models import Team

    Team.objects.filter(name="vision").update(max_running=1)  # alice's team
    runs = [on_lab(alice, "sleep 300") for _ in range(2)]
    try:
        first = wait_for(runs[0].pk, "running")
        wait_until(lambda: "at its cap of 1" in Run.objects.get(pk=runs[1].pk).status_reason, what="the team's cap shown")
        second = Run.objects.get(pk=runs[1].pk)
        assert second.status == "pending" and second.submitted_at is None
        assert not executor_for(second).exists(second)  # the cluster never heard of it
        terminate_run(first, actor=alice)
        assert wait_for(runs[1].pk, "running").node
    finally:
        end_all(alice, runs)


def test_a_cluster_whose_manager_does_not_answer_keeps_its_runs_waiting(alice, engine, tmp_path):
    from django.core.management import call_command

    call_command("register_cluster", "away", "--swarm", "--manager", f"unix://{tmp_path}/no-engine.sock",
                 "--registry", "registry.example.org", stdout=open("/dev/null", "w"))
    run = create_run(user=alice, source=yaml.safe_dump({
        "name": "waits", "image": "runyard/busybox:latest", "resources": {"cluster": "away"}, "run": [{"command": "true"}],
    }))
    wait_until(lambda: "manager of cluster away does not answer" in Run.objects.get(pk=run.pk).status_reason,
               what="the reason shown")
    assert Run.objects.get(pk=run.pk).status == "pending"
    terminate_run(run, actor=alice)
    assert statuses(wait_for(run.pk, "terminated")) == ["pending", "terminated"]
