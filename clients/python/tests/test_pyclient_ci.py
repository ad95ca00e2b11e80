"""CI identity: meta from the usual CI variables and a default holder that names the job."""

from __future__ import annotations

import json
import os

import pytest

from leasehold.model import ci_identity, default_holder

GITLAB = {
    "GITLAB_CI": "true", "CI_JOB_URL": "https://gitlab.example/lab/tests/-/jobs/1234",
    "CI_COMMIT_SHA": "9f2c1e0aa", "CI_PROJECT_PATH": "lab/tests", "CI_JOB_NAME": "nightly", "CI_JOB_ID": "1234",
    "CI_PIPELINE_URL": "https://gitlab.example/lab/tests/-/pipelines/77",
}


def test_gitlab_github_jenkins_and_a_bare_ci_are_recognised():
    meta, job = ci_identity(GITLAB)
    assert meta == {"job": GITLAB["CI_JOB_URL"], "commit": "9f2c1e0aa", "ci": "gitlab", "pipeline": GITLAB["CI_PIPELINE_URL"]}
    assert job == "gitlab/lab/tests/nightly#1234"

    meta, job = ci_identity({
        "GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "lab/tests",
        "GITHUB_RUN_ID": "555", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_SHA": "abc", "GITHUB_WORKFLOW": "ci",
        "GITHUB_JOB": "hw", "GITHUB_RUN_NUMBER": "12"})
    assert meta == {"job": "https://github.com/lab/tests/actions/runs/555/attempts/2", "commit": "abc", "ci": "github"}
    assert job == "github/lab/tests/ci/hw#12"

    meta, job = ci_identity({"BUILD_URL": "https://jenkins.example/job/nightly/42/", "JOB_NAME": "nightly",
                             "BUILD_NUMBER": "42", "GIT_COMMIT": "def"})
    assert meta == {"job": "https://jenkins.example/job/nightly/42/", "commit": "def", "ci": "jenkins"}
    assert job == "jenkins/nightly#42"

    assert ci_identity({"CI": "true", "GIT_COMMIT": "123"}) == ({"commit": "123", "ci": "ci"}, "ci/job")
    assert ci_identity({}) is None
    assert ci_identity({"CI": "true"}) is None
    assert ci_identity({"CI_JOB_URL": "  "}) is None


def test_the_default_holder_names_the_job_in_ci_and_the_user_elsewhere(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("CI", "GITHUB_", "GITLAB", "BUILD", "JENKINS", "LEASEHOLD_HOLDER", "TRAVIS", "CIRCLE", "TF_BUILD")):
            monkeypatch.delenv(name)
    assert "@" in default_holder()
    for key, value in GITLAB.items():
        monkeypatch.setenv(key, value)
    assert default_holder() == f"gitlab/lab/tests/nightly#1234 pid {os.getpid()}"
    monkeypatch.setenv("LEASEHOLD_HOLDER", "chosen")
    assert default_holder() == "chosen"


def test_the_plugin_fills_meta_from_ci_and_names_the_job(pytester, server, monkeypatch):
    for key, value in GITLAB.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LEASEHOLD_HOLDER", raising=False)
    out = pytester.path / "seen.json"
    pytester.makepyfile(
        f"""
        import json, urllib.request
        import pytest

        @pytest.mark.lease(name="switch-01")
        def test_ci(leased):
            with urllib.request.urlopen("{server.http_url}/v1/status", timeout=10) as resp:
                status = json.load(resp)
            lease = [l for l in status["leases"] if "switch-01" in l["resources"]][0]
            open({str(out)!r}, "w").write(json.dumps(lease))
        """
    )
    result = pytester.runpytest_subprocess(f"--leasehold-url={server.url}", "-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1)
    lease = json.loads(out.read_text())
    assert lease["holder"] == "pytest gitlab/lab/tests/nightly#1234"
    assert lease["meta"]["job"] == GITLAB["CI_JOB_URL"]
    assert lease["meta"]["commit"] == "9f2c1e0aa"
    assert lease["meta"]["ci"] == "gitlab"
    assert lease["meta"]["test"].endswith("::test_ci")
