"""Example step: fetch a GitHub-style issue record.

Action ``fetch-record``, input ``{owner, repo, number}``, output
``{number, title, author}``. It needs the property ``github_api`` (``env``
grant), the secret alias ``github`` bound to a Bearer-header connection
(``secrets`` grant) and the API host (``net`` grant). A 404 fails with
``issue OWNER/REPO#N not found``.
"""

from dataclasses import dataclass

from wrun_sdk import Actions, Error, HTTPError, action, http, log, properties, secrets

__all__ = ["Actions"]


@dataclass
class Record:
    """The input of ``fetch-record``."""

    owner: str
    repo: str
    number: int


@action("fetch-record", input=Record)
def fetch_record(record: Record) -> dict:
    """Fetches one issue and returns its number, title and author."""
    base = properties.require("github_api")
    github = secrets.get("github")
    log.info(f"fetching {record.owner}/{record.repo}#{record.number}")
    response = http.get(
        f"{base}/repos/{record.owner}/{record.repo}/issues/{record.number}",
        headers={"Accept": "application/vnd.github+json"},
        auth=github,
    )
    if response.status == 404:
        raise Error(f"issue {record.owner}/{record.repo}#{record.number} not found")
    issue = response.raise_for_status().json()
    return {
        "number": issue.get("number", record.number),
        "title": issue.get("title", ""),
        "author": (issue.get("user") or {}).get("login"),
    }
