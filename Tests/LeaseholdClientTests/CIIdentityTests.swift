import LeaseholdClient
import Testing

/// `hold` in CI: meta from the CI's variables, a holder that names the job.
@Suite struct CIIdentityTests {
    static let gitlab = [
        "GITLAB_CI": "true", "CI_JOB_URL": "https://gitlab.example/lab/tests/-/jobs/1234", "CI_COMMIT_SHA": "9f2c1e0aa",
        "CI_PROJECT_PATH": "lab/tests", "CI_JOB_NAME": "nightly", "CI_JOB_ID": "1234",
        "CI_PIPELINE_URL": "https://gitlab.example/lab/tests/-/pipelines/77",
    ]

    @Test func gitlabGithubJenkinsAndABareCIAreRecognised() throws {
        let gitlab = try #require(CIIdentity(environment: Self.gitlab))
        #expect(gitlab.job == "gitlab/lab/tests/nightly#1234")
        #expect(gitlab.meta.map { "\($0.0)=\($0.1)" } == ["job=https://gitlab.example/lab/tests/-/jobs/1234", "commit=9f2c1e0aa", "ci=gitlab",
                                                            "pipeline=https://gitlab.example/lab/tests/-/pipelines/77"])
        let github = try #require(CIIdentity(environment: [
            "GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "lab/tests",
            "GITHUB_RUN_ID": "555", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_SHA": "abc", "GITHUB_WORKFLOW": "ci", "GITHUB_JOB": "hw",
            "GITHUB_RUN_NUMBER": "12",
        ]))
        #expect(github.job == "github/lab/tests/ci/hw#12")
        #expect(github.meta.first?.1 == "https://github.com/lab/tests/actions/runs/555/attempts/2")
        let jenkins = try #require(CIIdentity(environment: ["BUILD_URL": "https://jenkins.example/job/nightly/42/", "JOB_NAME": "nightly",
                                                            "BUILD_NUMBER": "42", "GIT_COMMIT": "def"]))
        #expect(jenkins.job == "jenkins/nightly#42")
        #expect(jenkins.meta.map(\.0) == ["job", "commit", "ci"])
        #expect(CIIdentity(environment: ["CI": "true", "GIT_COMMIT": "123"])?.job == "ci/job")
        #expect(CIIdentity(environment: [:]) == nil)
        #expect(CIIdentity(environment: ["CI": "true"]) == nil)
        #expect(CIIdentity(environment: ["CI_JOB_URL": "  "]) == nil)
    }

    @Test func explicitMetaWinsKeyByKeyAndTheTotalStaysWithinSixteen() throws {
        let gitlab = try #require(CIIdentity(environment: Self.gitlab))
        let merged = gitlab.merged(into: [("job", "mine"), ("test", "t1")])
        #expect(merged.map(\.0) == ["job", "test", "commit", "ci", "pipeline"])
        #expect(merged.first?.1 == "mine")
        let many = (0..<15).map { ("k\($0)", "v") }
        #expect(gitlab.merged(into: many).count == 16)
    }
}
