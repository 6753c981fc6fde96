"""The dashboard's pages against a real database: what each shows, what each costs, and that actions need a
confirmation, a POST and the session's token (and are refused read-only or without the access token)."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re

import pytest
from starlette.testclient import TestClient

from pgsched import db
from pgsched.web.app import create_app
from tests.web.conftest import cost_of, csrf_of


def state_of(conn: db.Connection, job_id: int) -> str:
    return conn.row("SELECT state::text FROM sched_jobs_all WHERE id = %s", (job_id,))[0]  # type: ignore[index]


def test_the_queues_page_shows_the_live_figures_and_controls(client: TestClient, conn: db.Connection, seeded) -> None:
    conn.run("INSERT INTO sched_queues (queue, paused) VALUES ('web', true)")
    conn.run("INSERT INTO sched_queues (queue, rate, burst, tokens, refilled_at) VALUES ('other', 5, 5, 5, now())")
    page = client.get("/")
    assert page.status_code == 200
    text = page.text
    assert '<a href="/queues/web">web</a>' in text
    assert '<span class="flag paused">paused</span>' in text
    assert '<span class="flag rate">≤5/s</span>' in text
    assert "ValueError: no such report" in text  # latest failures
    assert 'href="/queues/web/resume"' in text and 'href="/queues/other/pause"' in text
    # The first refresh reads what `sched status --watch` reads: the two schema checks, the totals, the live
    # counts, the recent counts, the latest failures, the workers, the queue controls and the busiest groups.
    assert cost_of(text) == 9
    fragment = client.get("/?partial=1")
    assert fragment.status_code == 200 and "<html" not in fragment.text and "web" in fragment.text


def test_viewers_within_a_second_share_one_read(dsn: str, seeded) -> None:
    app = create_app(dsn)
    database = app.state.database
    database.snapshot_every_s = 60.0
    with TestClient(app) as client:
        assert cost_of(client.get("/").text) == 9
        assert cost_of(client.get("/").text) == 0
    database.snapshot_every_s = 0.0
    with TestClient(app) as client:
        # A later refresh skips the schema checks and the totals (re-read every 10 s: they scan the table).
        assert cost_of(client.get("/").text) == 6
    database.close()


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("all", ["waiting", "succeeded", "failed", "running", "scheduled", "queued"]),
        ("queued", ["queued"]),
        ("scheduled", ["scheduled"]),
        ("running", ["running"]),
        ("waiting", ["waiting"]),
        ("failed", ["failed"]),
        ("succeeded", ["succeeded"]),
        ("cancelled", []),
    ],
)
def test_a_queues_jobs_filtered_by_state_in_one_query(client: TestClient, seeded, state: str, expected) -> None:
    page = client.get(f"/queues/web?state={state}")
    assert page.status_code == 200
    shown = [int(i) for i in re.findall(r'<a href="/jobs/(\d+)">\1</a>', page.text)]
    assert shown == [seeded[s] for s in expected]
    assert cost_of(page.text) == 1


def test_task_and_key_filters(client: TestClient, seeded) -> None:
    def ids(url: str) -> list[int]:
        page = client.get(url)
        assert page.status_code == 200, page.text
        return [int(i) for i in re.findall(r'<a href="/jobs/(\d+)">\1</a>', page.text)]

    assert ids("/queues/web?task=report.build") == [seeded["failed"], seeded["running"]]
    assert ids("/queues/web?state=failed&task=mail.send") == []
    assert ids("/queues/web?key=order-1") == [seeded["queued"]]
    assert ids("/queues/web?state=queued&key=order-1") == [seeded["queued"]]
    assert ids("/queues/web?state=running&key=order-1") == []
    assert client.get("/queues/web?task=bad%20task").status_code == 400
    assert client.get("/queues/web?state=lost").status_code == 400


def test_the_job_page_shows_everything_and_the_why(client: TestClient, seeded) -> None:
    page = client.get(f"/jobs/{seeded['queued']}").text
    assert "ada@example.com" in page and "order-1" in page
    assert "<strong>why:</strong> no live worker serves queue web" in page
    waiting = html.unescape(client.get(f"/jobs/{seeded['waiting']}").text)
    assert f"waiting on dependencies: job {seeded['queued']} (queued)" in waiting
    assert f'<a href="/jobs/{seeded["queued"]}">{seeded["queued"]}</a> <span class="state queued">' in waiting
    failed = client.get(f"/jobs/{seeded['failed']}").text
    assert "attempts exhausted (3 of 3)" in failed and "Traceback ..." in failed and 'id="retry"' in failed
    running = client.get(f"/jobs/{seeded['running']}").text
    assert "&#34;done&#34;: 3" in running and 'id="cancel"' in running
    assert "&#34;sent&#34;: true" in client.get(f"/jobs/{seeded['succeeded']}").text
    missing = client.get("/jobs/987654")
    assert missing.status_code == 404 and "job 987654 not found" in missing.text


def test_workers_schedules_and_failure_groups(client: TestClient, conn: db.Connection, seeded) -> None:
    conn.run(
        "INSERT INTO sched_workers (id, host, pid, queues, tasks, concurrency, running) "
        "VALUES (gen_random_uuid(), 'box-1', 4242, '{web}', '{mail.send}', 8, 2)"
    )
    conn.run(
        "INSERT INTO sched_schedules (name, cron, task, queue, next_run_at) "
        "VALUES ('nightly', '0 3 * * *', 'report.build', 'web', now() + interval '1 day')"
    )
    workers = client.get("/workers").text
    assert "box-1" in workers and "4242" in workers and "2/8" in workers and cost_of(workers) == 1
    schedules = client.get("/schedules").text
    assert "nightly" in schedules and "0 3 * * *" in schedules and cost_of(schedules) == 1
    failures = client.get("/failures").text
    assert cost_of(failures) == 1
    # Two groups of one failure each: same task and error on two queues; the traceback is not part of the group.
    assert failures.count("ValueError: no such report") == 2
    assert "Traceback" not in failures


def test_cancel_and_retry_go_through_a_confirmation_and_a_post(client: TestClient, conn, seeded) -> None:
    confirm = client.get(f"/jobs/{seeded['queued']}/cancel")
    assert confirm.status_code == 200
    assert "It will not run, and neither will the jobs that depend on it." in confirm.text
    assert state_of(conn, seeded["queued"]) == "queued"  # asking changes nothing
    done = client.post(f"/jobs/{seeded['queued']}/cancel", data={"csrf": csrf_of(confirm.text)})
    assert done.status_code == 200 and "cancelled with 1 dependent job(s)" in done.text
    assert state_of(conn, seeded["queued"]) == "cancelled"
    assert state_of(conn, seeded["waiting"]) == "cancelled"

    confirm = client.get(f"/jobs/{seeded['failed']}/retry")
    done = client.post(f"/jobs/{seeded['failed']}/retry", data={"csrf": csrf_of(confirm.text)})
    assert "retried: queued" in done.text
    assert state_of(conn, seeded["failed"]) == "queued"

    again = client.post(f"/jobs/{seeded['succeeded']}/retry", data={"csrf": csrf_of(confirm.text)})
    assert again.status_code == 409
    assert "only failed or cancelled jobs can be retried" in again.text


def test_pause_and_resume(client: TestClient, conn: db.Connection, seeded) -> None:
    token = csrf_of(client.get("/queues/web/pause").text)
    assert client.post("/queues/web/pause", data={"csrf": token}).status_code == 200
    assert conn.row("SELECT paused FROM sched_queues WHERE queue = 'web'") == (True,)
    assert client.post("/queues/web/resume", data={"csrf": token}).status_code == 200
    assert conn.row("SELECT paused FROM sched_queues WHERE queue = 'web'") is None


def test_a_post_without_its_sessions_token_is_refused(client: TestClient, conn: db.Connection, seeded) -> None:
    job = seeded["failed"]
    token = csrf_of(client.get(f"/jobs/{job}/retry").text)
    assert client.post(f"/jobs/{job}/retry").status_code == 403
    assert client.post(f"/jobs/{job}/retry", data={"csrf": "0" * 64}).status_code == 403
    # Another browser (a fresh session) cannot reuse this session's token.
    with TestClient(client.app) as other:
        assert other.post(f"/jobs/{job}/retry", data={"csrf": token}).status_code == 403
    # A form posted from another site is refused even with the right token.
    refused = client.post(f"/jobs/{job}/retry", data={"csrf": token}, headers={"origin": "https://evil.example"})
    assert refused.status_code == 403
    assert state_of(conn, job) == "failed"
    assert client.post(f"/jobs/{job}/retry", data={"csrf": token}).status_code == 200
    assert state_of(conn, job) == "queued"


def test_read_only_hides_and_refuses_actions(dsn: str, conn: db.Connection, seeded) -> None:
    app = create_app(dsn, read_only=True)
    with TestClient(app) as client:
        page = client.get(f"/jobs/{seeded['failed']}").text
        assert "read-only" in page and 'id="retry"' not in page
        assert "/pause" not in client.get("/").text
        assert client.get(f"/jobs/{seeded['failed']}/retry").status_code == 403
        # Even a form with this session's valid token is refused.
        session = client.cookies.get("sched_session")
        secret = app.user_middleware[0].kwargs["secret"]
        form = {"csrf": hmac.new(secret, b"csrf:" + session.encode(), hashlib.sha256).hexdigest()}
        refused = client.post(f"/jobs/{seeded['failed']}/retry", data=form)
        assert refused.status_code == 403 and "this dashboard is read-only" in refused.text
    app.state.database.close()
    assert state_of(conn, seeded["failed"]) == "failed"


def test_the_access_token_is_required_when_set(dsn: str, seeded) -> None:
    app = create_app(dsn, token="s3cret-token")
    with TestClient(app) as client:
        assert client.get("/").status_code == 401
        assert client.get("/?token=wrong").status_code == 401
        entered = client.get("/queues/web?state=failed&token=s3cret-token", follow_redirects=False)
        assert entered.status_code == 303
        assert entered.headers["location"] == "/queues/web?state=failed"
        assert client.get("/queues/web?state=failed").status_code == 200  # the cookie now stands for the token
    with TestClient(app) as client:
        assert client.get("/", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        assert client.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
    app.state.database.close()


def test_pages_keep_out_of_frames_and_other_sites_scripts(client: TestClient) -> None:
    page = client.get("/workers")
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert client.get("/static/live.js").status_code == 200


def test_what_jobs_carry_is_escaped(client: TestClient, conn: db.Connection) -> None:
    job_id = conn.row(
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, payload, error) "
        "VALUES ('web', 'mail.send', 'failed', 1, now(), now(), '{\"html\": \"<img src=x onerror=alert(1)>\"}', "
        "'<script>alert(1)</script>') RETURNING id"
    )[0]  # type: ignore[index]
    for path in (f"/jobs/{job_id}", "/queues/web?state=failed", "/failures", "/"):
        page = client.get(path).text
        assert "<script>alert(1)</script>" not in page and "<img src=x" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


def test_pages_survive_a_broken_connection(client: TestClient, conn: db.Connection, seeded) -> None:
    assert client.get("/workers").status_code == 200
    assert client.get("/").status_code == 200
    # What a server restart does to the dashboard's connection.
    ended = conn.rows(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'sched-ui' AND datname = current_database()"
    )
    assert ended == [(True,)]
    assert client.get("/workers").status_code == 200  # read again on a new connection
    assert client.get("/?partial=1").status_code == 200


def test_a_page_that_ran_out_of_its_walk_says_why(client: TestClient, conn: db.Connection) -> None:
    conn.run(
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at) "
        "SELECT 'busy', 'mail.send', 'succeeded', 1, now(), now() FROM generate_series(1, 5100)"
    )
    conn.run(
        "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at) "
        "VALUES ('quiet', 'mail.send', 'succeeded', 1, now(), now() - interval '1 day')"
    )
    page = client.get("/queues/quiet?state=succeeded").text
    assert "This page examined 5,000 jobs in index order and 0 matched" in page
    assert "finished jobs of every queue and final state share one index" in page
    following = re.search(r'id="next" href="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    assert len(re.findall(r'<a href="/jobs/\d+">', client.get(html.unescape(following)).text)) == 1


def test_the_job_page_shows_the_group_and_the_trace(client: TestClient, conn: db.Connection) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    (traced,) = conn.row(
        "INSERT INTO sched_jobs (queue, task, group_name, trace_context) VALUES ('web', 'mail.send', 'tenant:7', %s)"
        " RETURNING id",
        (json.dumps({"traceparent": parent, "tracestate": "k=v"}),),
    )
    (plain,) = conn.row("INSERT INTO sched_jobs (task) VALUES ('t') RETURNING id")
    page = client.get(f"/jobs/{traced}").text
    assert "<th>group</th><td>tenant:7</td>" in page and f"<th>trace</th><td>{parent}</td>" in page
    page = client.get(f"/jobs/{plain}").text
    assert "<th>group</th>" not in page and "<th>trace</th>" not in page
