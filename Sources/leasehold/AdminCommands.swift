import ArgumentParser
import LeaseholdClient

/// `--token-file`, shared by the admin verbs.
struct AdminOptions: ParsableArguments {
    @OptionGroup var connection: ConnectionOptions

    @Option(name: .long, help: ArgumentHelp("File holding the admin token (default: $LEASEHOLD_ADMIN_TOKEN).", valueName: "file"))
    var tokenFile: String?

    func client() throws -> (LeaseholdHTTP, String?) {
        let server = try connection.serverURL()
        return (LeaseholdHTTP(server: server, timeout: .seconds(fractional: connection.connectTimeout)), adminToken(file: tokenFile))
    }
}

private let adminDiscussion = """
    Needs the server's admin token: LEASEHOLD_ADMIN_TOKEN or --token-file FILE. Exit status: 0 done; \
    1 refused by the server (unknown resource, not held, invalid inventory); 69 server unreachable; \
    79 no token, wrong token, or admin calls disabled on the server.
    """

private func perform(_ action: LeaseholdHTTP.AdminAction, _ resource: String, reason: String?, now: Bool = false,
                     options: AdminOptions) throws {
    let (client, token) = try options.client()
    do {
        _ = try client.admin(action, resource: resource, reason: reason, token: token, now: now)
    } catch {
        fail(error)
    }
    let done = ["free": "freed (its lease is revoked)", "disable": "disabled", "enable": "enabled",
                "reset": "is being reset (leasehold status shows the outcome)"][action.rawValue] ?? action.rawValue
    writeOut("leasehold: \(resource) \(done)\n")
}

struct Free: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Force-free a held resource: revokes the whole lease holding it.", discussion: adminDiscussion)

    @OptionGroup var admin: AdminOptions
    @Argument(help: "The resource to free.") var name: String
    @Option(name: .long, help: "Why (shown to the holder and kept in the audit log).") var reason: String
    @Flag(name: .long, help: "Free at once, even if the holder asked for time to stop its work (revoke_wait).") var now = false

    func run() throws { try perform(.free, name, reason: reason, now: now, options: admin) }
}

struct Reset: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a resource's reset command now (the inventory's reset; the resource must be free or disabled).",
        discussion: adminDiscussion)

    @OptionGroup var admin: AdminOptions
    @Argument(help: "The resource to reset.") var name: String

    func run() throws { try perform(.reset, name, reason: nil, options: admin) }
}

struct Disable: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take a resource out of service (a current lease runs on).", discussion: adminDiscussion)

    @OptionGroup var admin: AdminOptions
    @Argument(help: "The resource to disable.") var name: String
    @Option(name: .long, help: "Why (kept in the audit log).") var reason: String?

    func run() throws { try perform(.disable, name, reason: reason, options: admin) }
}

struct Enable: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Put a disabled resource back in service.", discussion: adminDiscussion)

    @OptionGroup var admin: AdminOptions
    @Argument(help: "The resource to enable.") var name: String
    @Option(name: .long, help: "Why (kept in the audit log).") var reason: String?

    func run() throws { try perform(.enable, name, reason: reason, options: admin) }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make the server re-read its inventory file.", discussion: adminDiscussion)

    @OptionGroup var admin: AdminOptions

    func run() throws {
        let (client, token) = try admin.client()
        do {
            let message = try client.reload(token: token)
            writeOut("leasehold: \(message)\n")
        } catch {
            fail(error)
        }
    }
}
