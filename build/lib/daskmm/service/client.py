"""A client of the fitting service (standard library only): what ``daskmm submit``,
``daskmm status``, ``daskmm fetch`` and ``daskmm cancel`` call. The token comes from
``DASKMM_TOKEN``, the server from ``--server`` or ``DASKMM_SERVER``."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from daskmm.data.staging import RESULT_MARKER, check_output, result_marker, staging_dir
from daskmm.errors import DaskmmError

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ServiceClient:
    """Calls to one server with one token."""

    def __init__(self, server: str | None = None, token: str | None = None,
                 timeout: float = 60.0):
        self.server = (server or os.environ.get("DASKMM_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.token = token if token is not None else os.environ.get("DASKMM_TOKEN")
        if not self.token:
            raise DaskmmError("no token: set DASKMM_TOKEN to your token for the server")
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.server + path, data=body, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw).get("detail", raw.decode(errors="replace"))
            except (json.JSONDecodeError, AttributeError):
                detail = raw.decode(errors="replace")
            raise DaskmmError(f"{self.server} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DaskmmError(f"no answer from {self.server}: {getattr(exc, 'reason', exc)}; "
                              "check --server (or DASKMM_SERVER)") from None

    def json(self, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None) -> dict:
        return json.loads(self.request(method, path, body, headers)[1] or b"{}")

    def submit(self, job_file: str | Path, priority: int = 0,
               idempotency_key: str | None = None) -> dict:
        p = Path(job_file)
        if not p.is_file():
            raise DaskmmError(f"job file {str(p)!r} does not exist")
        headers = {"Content-Type": "application/yaml"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return self.json("POST", f"/v1/jobs?priority={int(priority)}", p.read_bytes(), headers)

    def status(self, job_id: str) -> dict:
        return self.json("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self.json("POST", f"/v1/jobs/{job_id}/cancel")

    def fetch(self, job_id: str, out: str | Path, force: bool = False) -> list[Path]:
        """Download a succeeded job's result files into ``out``: a new (or empty) folder,
        or with ``force`` a folder an earlier ``daskmm fetch`` wrote (its marker says so).
        A folder daskmm did not write is never replaced, ``force`` or not; the files are
        written under a hidden sibling and renamed into place at the end."""
        target = check_output(out, "fetch", force=force, what="--out")
        job = self.status(job_id)
        if job["state"] != "succeeded":
            raise DaskmmError(f"job {job_id} is {job['state']}"
                              + (f": {job['error']}" if job.get("error") else "")
                              + "; results exist once it has succeeded")
        names = list(job.get("results", []))
        for name in names:
            parts = PurePosixPath(name).parts if isinstance(name, str) else ()
            if (not parts or PurePosixPath(name).is_absolute()
                    or any(p in ("..", ".") for p in parts) or "\\" in name
                    or parts[0].startswith((".", "_"))):
                raise DaskmmError(f"{self.server} listed a result file {name!r} that is not "
                                  "a plain name inside the job's folder; nothing was written")
        written = []
        with staging_dir(target) as tmp:
            for name in names:
                _, data = self.request("GET", f"/v1/jobs/{job_id}/results/{name}")
                dest = tmp / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                written.append(target / name)
            (tmp / RESULT_MARKER).write_text(result_marker("fetch", job_id))
            # again just before the rename: a folder made at --out meanwhile is not replaced
            check_output(out, "fetch", force=force, what="--out")
        return written
