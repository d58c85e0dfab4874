"""`make dashboard` and a team's runs: a parent run of the assistant links to its child run in the Poet's app,
and the child back to its parent (examples/team; the fixtures are tests/test_team.py's)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from test_team import delegate, poet, poet_config  # noqa: F401 (fixtures)

from tools.runs.dashboard import build_app
from tools.stack.settings import SERVICE_APP_ID, TEAM_APP_ID


def test_the_dashboard_links_a_parent_run_to_its_child_in_the_other_app_and_back(poet, service, scripted_llm):  # noqa: F811
    task, _ = delegate(scripted_llm, scripted_llm, "a family")
    instance_id = service.start_run(task)
    assert service.wait_until_done(instance_id)["runtime_status"] == "COMPLETED"
    dashboard = TestClient(build_app(SERVICE_APP_ID), base_url="http://localhost")
    parent = dashboard.get(f"/api/runs/{instance_id}").json()
    assert parent["family"]["parent"] is None, parent["family"]
    (child,) = parent["family"]["children"]
    assert child["app_id"] == TEAM_APP_ID, child
    # Not a run of the service's app: the dashboard finds it in the app the parent names.
    assert dashboard.get(f"/api/runs/{child['instance_id']}").status_code == 404
    shown = dashboard.get(f"/api/runs/{child['instance_id']}", params={"app": TEAM_APP_ID}).json()
    assert (shown["app_id"], shown["status"], shown["name"]) == (TEAM_APP_ID, "COMPLETED", "dapr.agents.Poet.workflow")
    assert shown["family"] == {"parent": {"instance_id": instance_id, "app_id": SERVICE_APP_ID}, "children": []}
    assert dashboard.get("/api/runs/x", params={"app": "not an app"}).status_code == 503
