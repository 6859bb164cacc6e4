"""The job store on SQLite and on a real PostgreSQL server (a temporary instance started
here from Debian's postgresql binaries): versioned migrations, idempotent submission and
exclusive claims under concurrent callers, recovery of one replica's jobs, retries."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from daskmm.service.store import JOB_ID, SCHEMA_VERSION, Conflict, Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    url = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa
    eng = sa.create_engine(url)
    with eng.begin() as conn:  # each test its own empty schema
        conn.execute(sa.text("DROP TABLE IF EXISTS transitions, jobs, schema_version"))
    eng.dispose()
    return url


BODY = {"data": "/d/x.csv", "formula": "y ~ x + (1 | g)", "output": f"/r/alice/{JOB_ID}"}


def test_migrations_are_versioned_and_applied_once(store_url):
    s = Store(store_url)
    assert s.version() == SCHEMA_VERSION
    job, _ = s.submit("alice", "a", BODY, "fp-1")
    again = Store(store_url)  # reopening applies nothing and keeps the jobs
    assert again.version() == SCHEMA_VERSION and again.get(job.id).owner == "alice"
    assert again.get(job.id).result_dir == f"/r/alice/{job.id}"
    assert again.get(job.id).body["output"] == f"/r/alice/{job.id}"


def test_concurrent_submissions_of_one_body_make_one_job(store_url):
    s = Store(store_url)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: s.submit("alice", "a", BODY, "fp-same"), range(16)))
    ids = {j.id for j, _ in got}
    assert len(ids) == 1 and sum(created for _, created in got) == 1
    other, created = s.submit("bob", "a", BODY, "fp-same")  # another owner: another job
    assert created and other.id not in ids
    k1, _ = s.submit("alice", "k", BODY, "fp-k", idem_key="key-1")
    k2, created = s.submit("alice", "k", BODY, "fp-k", idem_key="key-1")
    assert k1.id == k2.id and not created
    with pytest.raises(Conflict):
        s.submit("alice", "k", BODY, "fp-other", idem_key="key-1")


def test_each_job_is_claimed_once_by_concurrent_runners(store_url):
    s = Store(store_url)
    ids = {s.submit("alice", f"j{i}", BODY, f"fp-{i}", priority=i % 3)[0].id
           for i in range(20)}
    claimed: list[str] = []
    lock = threading.Lock()

    def runner(k: int) -> None:
        while (job := s.claim(f"r{k}:1")) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=runner, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert s.counts()["running"] == 20


def test_priority_then_submission_order(store_url):
    s = Store(store_url)
    a = s.submit("alice", "a", BODY, "fa")[0]
    b = s.submit("alice", "b", BODY, "fb", priority=5)[0]
    c = s.submit("alice", "c", BODY, "fc")[0]
    d = s.submit("alice", "d", BODY, "fd", priority=5)[0]
    assert [s.claim("r:1").id for _ in range(4)] == [b.id, d.id, a.id, c.id]


def test_recovery_fails_only_this_replicas_jobs_and_retry_queues_them(store_url):
    s = Store(store_url)
    mine = s.submit("alice", "m", BODY, "fm")[0]
    theirs = s.submit("alice", "t", BODY, "ft")[0]
    s.claim("replica-a:100")
    s.claim("replica-b:200")
    failed = s.recover("replica-a:", "the server stopped")
    assert failed == [mine.id]
    assert s.get(mine.id).state == "failed" and s.get(mine.id).error == "the server stopped"
    assert s.get(theirs.id).state == "running"
    # the same body can be submitted again now that the job failed; retry is refused then
    again, created = s.submit("alice", "m", BODY, "fm")
    assert created and again.id != mine.id
    assert not s.retry(mine.id)
    s.finish(again.id, "cancelled", "by hand")
    assert s.retry(mine.id) and s.get(mine.id).state == "queued"
    assert s.get(mine.id).attempt == 2
    assert [h["state"] for h in s.history(mine.id)] == ["queued", "running", "failed",
                                                        "queued"]
    assert not s.finish(theirs.id, "succeeded") or s.get(theirs.id).state == "succeeded"
    assert not s.finish(theirs.id, "failed")  # already ended


def test_store_writable_check(store_url):
    assert Store(store_url).writable()


def test_postgres_is_really_used(postgres_url):
    import sqlalchemy as sa
    s = Store(postgres_url)
    assert s.engine.dialect.name == "postgresql"
    with s.engine.connect() as conn:
        assert conn.execute(sa.text("select version()")).scalar().startswith("PostgreSQL")
