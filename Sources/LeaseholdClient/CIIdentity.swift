#if canImport(Glibc)
import Glibc
#endif

/// Who is asking, when a CI system runs the client: provenance for `meta` and a holder that names
/// the job, read from the variables the usual CI systems set (GitLab, GitHub Actions, Jenkins,
/// Buildkite, CircleCI, Travis, Azure Pipelines). Mirrors the Python client's `ci_identity`.
public struct CIIdentity: Sendable, Equatable {
    /// `gitlab`, `github`, `jenkins`, …
    public var system: String
    /// `job` (a URL), `commit`, `ci`, and `pipeline` when known, in that order.
    public var meta: [(String, String)]
    /// The job, for the holder: `gitlab/group/project/test-job#1234`.
    public var job: String

    public static func == (lhs: CIIdentity, rhs: CIIdentity) -> Bool {
        lhs.system == rhs.system && lhs.job == rhs.job && lhs.meta.count == rhs.meta.count
            && zip(lhs.meta, rhs.meta).allSatisfy { $0 == $1 }
    }

    /// nil outside CI. `environment`: the process's variables.
    public init?(environment: [String: String]) {
        func value(_ name: String) -> String? {
            guard let text = environment[name]?.trimmingCharacters(), !text.isEmpty else { return nil }
            return text
        }
        func joined(_ parts: String?..., separator: String = "/") -> String? {
            let present = parts.compactMap { $0 }
            return present.isEmpty ? nil : present.joined(separator: separator)
        }
        func numbered(_ name: String?, _ number: String?) -> String? {
            guard let name else { return number.map { "#\($0)" } }
            return number.map { "\(name)#\($0)" } ?? name
        }
        var url: String?
        var commit: String?
        var pipeline: String?
        var job: String?
        if value("GITLAB_CI") != nil || value("CI_JOB_URL") != nil {
            system = "gitlab"
            url = value("CI_JOB_URL")
            commit = value("CI_COMMIT_SHA")
            pipeline = value("CI_PIPELINE_URL")
            job = numbered(joined(value("CI_PROJECT_PATH"), value("CI_JOB_NAME")), value("CI_JOB_ID"))
        } else if value("GITHUB_ACTIONS") != nil || value("GITHUB_RUN_ID") != nil {
            system = "github"
            if let server = value("GITHUB_SERVER_URL"), let repository = value("GITHUB_REPOSITORY"), let run = value("GITHUB_RUN_ID") {
                url = "\(server)/\(repository)/actions/runs/\(run)"
                if let attempt = value("GITHUB_RUN_ATTEMPT"), attempt != "1" { url! += "/attempts/\(attempt)" }
            }
            commit = value("GITHUB_SHA")
            job = numbered(joined(value("GITHUB_REPOSITORY"), value("GITHUB_WORKFLOW"), value("GITHUB_JOB")), value("GITHUB_RUN_NUMBER"))
        } else if value("BUILDKITE") != nil || value("BUILDKITE_BUILD_URL") != nil {
            system = "buildkite"
            url = value("BUILDKITE_BUILD_URL").map { base in value("BUILDKITE_JOB_ID").map { "\(base)#\($0)" } ?? base }
            commit = value("BUILDKITE_COMMIT")
            job = numbered(joined(value("BUILDKITE_PIPELINE_SLUG"), value("BUILDKITE_LABEL")), value("BUILDKITE_BUILD_NUMBER"))
        } else if value("CIRCLECI") != nil || value("CIRCLE_BUILD_URL") != nil {
            system = "circleci"
            url = value("CIRCLE_BUILD_URL")
            commit = value("CIRCLE_SHA1")
            job = numbered(joined(value("CIRCLE_PROJECT_REPONAME"), value("CIRCLE_JOB")), value("CIRCLE_BUILD_NUM"))
        } else if value("TRAVIS") != nil || value("TRAVIS_JOB_WEB_URL") != nil {
            system = "travis"
            url = value("TRAVIS_JOB_WEB_URL") ?? value("TRAVIS_BUILD_WEB_URL")
            commit = value("TRAVIS_COMMIT")
            job = numbered(joined(value("TRAVIS_REPO_SLUG"), value("TRAVIS_JOB_NAME")), value("TRAVIS_JOB_NUMBER"))
        } else if value("TF_BUILD") != nil || value("BUILD_BUILDID") != nil {
            system = "azure"
            if let collection = value("SYSTEM_COLLECTIONURI"), let project = value("SYSTEM_TEAMPROJECT"), let build = value("BUILD_BUILDID") {
                url = "\(collection)\(collection.hasSuffix("/") ? "" : "/")\(project)/_build/results?buildId=\(build)"
            }
            commit = value("BUILD_SOURCEVERSION")
            job = numbered(joined(value("BUILD_DEFINITIONNAME"), value("AGENT_JOBNAME")), value("BUILD_BUILDNUMBER"))
        } else if value("BUILD_URL") != nil || value("JENKINS_URL") != nil {
            system = "jenkins"
            url = value("BUILD_URL")
            job = numbered(value("JOB_NAME"), value("BUILD_NUMBER"))
        } else if value("CI") != nil, value("CI_COMMIT_SHA") != nil || value("GIT_COMMIT") != nil {
            system = "ci"
        } else {
            return nil
        }
        commit = commit ?? value("GIT_COMMIT") ?? value("CI_COMMIT_SHA")
        var meta: [(String, String)] = []
        if let url { meta.append(("job", url)) }
        if let commit { meta.append(("commit", commit)) }
        meta.append(("ci", system))
        if let pipeline { meta.append(("pipeline", pipeline)) }
        self.meta = meta.map { ($0.0, String(String.UnicodeScalarView($0.1.unicodeScalars.prefix(500)))) }
        self.job = "\(system)/" + (job ?? url ?? "job")
    }

    /// This process's environment variables.
    public static func processEnvironment() -> [String: String] {
        var variables: [String: String] = [:]
        var cursor = environ
        while let entry = cursor.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                variables[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            cursor += 1
        }
        return variables
    }

    /// `meta` with `explicit` (what the user asked for) taking precedence key by key, the
    /// explicit ones first; at most 16 entries.
    public func merged(into explicit: [(String, String)]) -> [(String, String)] {
        let given = Set(explicit.map(\.0))
        return Array((explicit + meta.filter { !given.contains($0.0) }).prefix(16))
    }
}

extension String {
    fileprivate func trimmingCharacters() -> String {
        var view = Substring(self).unicodeScalars
        while let first = view.first, first == " " || first == "\t" || first == "\n" || first == "\r" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" || last == "\n" || last == "\r" { view = view.dropLast() }
        return String(view)
    }
}
